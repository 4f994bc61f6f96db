"""The env's text space: any unicode string within the length bounds, and its shared-memory layout
for Gymnasium's ``AsyncVectorEnv``."""

from __future__ import annotations

import multiprocessing
import re
import string
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import shared_memory

# Characters Text.sample() draws from; `contains` accepts any string (model output is arbitrary unicode).
SAMPLE_CHARSET = string.ascii_letters + string.digits + " .,;:!?+-*/=()'\n"


LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate (``"\\ud800"``): a JSON string may hold one, but it is not text: no UTF-8, no tokenizer."""


class ReasoningText(gym.spaces.Text):
    """A ``Text`` space whose members are unicode strings within the length bounds.

    Gymnasium's ``Text`` only admits characters of its charset (alphanumeric by default), but a
    language model emits arbitrary unicode. Not members: lone surrogates (``"\\ud800"``: not text,
    no tokenizer can encode them) and, with ``blank=False``, strings of only whitespace. Sampling
    draws from ``SAMPLE_CHARSET``.
    """

    def __init__(self, max_length: int, *, min_length: int = 0, blank: bool = True, seed: int | None = None):
        super().__init__(max_length, min_length=min_length, charset=SAMPLE_CHARSET, seed=seed)
        self.blank = blank

    def violation(self, x: Any) -> str | None:
        """Why ``x`` is not a member (``None`` when it is)."""
        if not isinstance(x, str):
            return f"must be a str, got {type(x).__name__}: {x!r:.80}"
        if not self.min_length <= len(x) <= self.max_length:
            return f"must have {self.min_length} to {self.max_length} characters, got {len(x)}"
        if not self.blank and not x.strip():
            return f"must contain a non-whitespace character, got {x!r:.80}"
        surrogate = LONE_SURROGATE.search(x)
        if surrogate:
            return (f"must be valid unicode text, got a lone surrogate {surrogate.group()!r} at index "
                    f"{surrogate.start()} (it has no UTF-8 encoding)")
        return None

    def contains(self, x: Any) -> bool:
        return self.violation(x) is None

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        text = super().sample(mask, probability)
        while mask is None and probability is None and not self.contains(text):  # blank=False drew spaces
            text = super().sample()
        return text

    def __repr__(self) -> str:
        return f"ReasoningText({self.min_length}, {self.max_length}, charset=<any unicode>)"


# AsyncVectorEnv passes observations through shared memory. Gymnasium stores a Text as indices into
# its charset (model output is any unicode) and reads the memory once, into a tuple that later steps
# never update; a ReasoningText stores code points (-1 past the end) read through a live view.
class SharedTexts(Sequence):
    """The strings in an AsyncVectorEnv's shared memory, read when indexed (as Gymnasium's array
    views are); a deep copy, which the vector env returns unless ``copy=False``, is a tuple."""

    def __init__(self, codes: np.ndarray):
        self.codes = codes  # (n, max_length)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self)[i]
        row = self.codes[i]
        return "".join(map(chr, row[row >= 0]))

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"SharedTexts({tuple(self)!r})"


@shared_memory.create_shared_memory.register(ReasoningText)
def _create_text_memory(space: ReasoningText, n: int = 1, ctx: Any = multiprocessing) -> Any:
    memory = ctx.Array(np.dtype(np.int32).char, n * space.max_length)
    np.frombuffer(memory.get_obj(), dtype=np.int32)[:] = -1  # (n · max_length,)
    return memory


@shared_memory.read_from_shared_memory.register(ReasoningText)
def _read_text_memory(space: ReasoningText, memory: Any, n: int = 1) -> SharedTexts:
    return SharedTexts(np.frombuffer(memory.get_obj(), dtype=np.int32).reshape(n, space.max_length))


@shared_memory.write_to_shared_memory.register(ReasoningText)
def _write_text_memory(space: ReasoningText, index: int, value: str, memory: Any) -> None:
    size = space.max_length
    row = np.frombuffer(memory.get_obj(), dtype=np.int32)[index * size:(index + 1) * size]  # (max_length,)
    row[:] = -1
    row[:len(value)] = np.fromiter(map(ord, value), dtype=np.int32, count=len(value))
