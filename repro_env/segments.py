"""Reasoning text → segments, and segment character boundaries → token positions (REPRO_SPEC §1).

Segments are cut on **characters**, then mapped to tokens with the tokenizer's offset mappings:
byte-level BPE often merges ``".\\n\\n"`` into one token, so looking for a delimiter *token* would
miss boundaries. Conventions:

- a segment keeps its trailing delimiter, and ``"".join(split_segments(text)) == text``;
- a run of delimiters stays with the segment before it, never an empty or delimiter-only segment
  (``"a\\n\\n\\n\\nb"`` → ``["a\\n\\n\\n\\n", "b"]``), and so does a trailing partial delimiter
  (``"a\\n\\n\\nb"`` → ``["a\\n\\n\\n", "b"]``); a leading run belongs to the first segment;
- a token belongs to the segment in which it **starts**; a character boundary maps to the index of
  the first token starting at or after it. Zero-width tokens (special tokens such as BOS, offsets
  ``(0, 0)``) belong to what precedes them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from repro_env.errors import ConfigError, ScorerError

DEFAULT_DELIMITER = "\n\n"
"""The segment delimiter of the built-in tasks (REPRO_SPEC §1)."""
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
"""The think-block tags of R1-style responses (REPRO_SPEC §1)."""


def _run_pattern(delimiter: str) -> re.Pattern[str]:
    """``(?:D)+`` followed by the longest proper prefix of D that is present (the partial tail)."""
    escaped = re.escape(delimiter)
    prefixes = "|".join(re.escape(delimiter[:k]) for k in range(len(delimiter) - 1, 0, -1))
    tail = f"(?:{prefixes})?" if prefixes else ""
    return re.compile(f"(?:{escaped})+{tail}")


def split_segments(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """Split ``text`` after each run of ``delimiter``; segments keep their delimiters (module doc).

    ``""`` → ``[]``; ``"a\\n\\nb"`` → ``["a\\n\\n", "b"]``; ``"a\\n\\n"`` → ``["a\\n\\n"]``.
    """
    if not isinstance(delimiter, str) or delimiter == "":
        raise ConfigError(f"field 'delimiter' must be a non-empty string, got {delimiter!r}")
    segments: list[str] = []
    start = 0
    for run in _run_pattern(delimiter).finditer(text):
        # A run at the very start has no content before it: it joins the first segment.
        if run.start() > start and run.end() < len(text):
            segments.append(text[start:run.end()])
            start = run.end()
    if start < len(text):
        segments.append(text[start:])
    return segments


def reasoning_length(segments: Sequence[str], final_answer: re.Pattern[str]) -> int:
    """How many leading ``segments`` are reasoning: those before the first one that states the final
    answer (matches ``final_answer``, the task's ``final_answer_regex``); all of them when none does.

    REPRO_SPEC §4 **(choice)**: without a think block the reasoning ends *before* the segment that
    states the final answer. That segment and any after it are not scored: once the answer is
    written, J no longer measures confidence in it. ``["a\\n\\n", "so \\boxed{2}"]`` → 1.
    """
    return next((t for t, segment in enumerate(segments) if final_answer.search(segment)), len(segments))


@dataclass(frozen=True)
class SplitResponse:
    """A finished response as RePro scores it (:func:`split_response`)."""

    prefix: str
    """What J conditions on before the reasoning: the prompt, plus the response's text up to and
    including its open think tag and the whitespace after it."""
    segments: tuple[str, ...]
    """The reasoning segments τ_1..τ_R, the scored ones, each ending with the delimiter."""
    spans: tuple[tuple[int, int], ...]
    """(R,) each reasoning segment's ``(begin, end)`` characters in the response, before the
    delimiter was normalised; contiguous, so ``spans[-1][1]`` is where the reasoning ends."""
    after: tuple[str, ...]
    """Without a think block: the segments from the one that states the final answer on (not
    scored); with one: empty (the text after the reasoning is ``tail``)."""
    tail: str
    """The response's text after the reasoning, as written: ``</think>`` and what follows it, or the
    text of ``after``."""
    think: bool
    """The response has a think block (its reasoning is the block's inside)."""
    truncated: bool
    """The think block was never closed: all of the text after the open tag counts as reasoning."""


def split_response(prompt: str, response: str | Sequence[str], *, final_answer: re.Pattern[str],
                   delimiter: str = DEFAULT_DELIMITER, think_tags: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE)
                   ) -> SplitResponse:
    """Split a finished response into what RePro scores (REPRO_SPEC §1, §4): the one definition
    that ``repro-env score``, the TRL trainer and the env's end-of-reasoning rule share.

    - **Think block**: the response has one when it contains the close tag or the open tag, or when
      ``prompt`` ends with the open tag (R1 and Qwen3 chat templates put ``<think>\n`` in the
      generation prompt). The reasoning is the text after the open tag (and the whitespace after
      it) up to the first close tag, and all of it is scored. Without a close tag it runs to the
      end, and the response is ``truncated``.
    - **No think block**: the response is split on ``delimiter`` and the reasoning ends before the
      first segment that matches ``final_answer`` (:func:`reasoning_length`, REPRO_SPEC §4).
    - A list of strings is a response already cut into segments (no think block); each gets the
      delimiter when it lacks it.
    - Segments end with ``delimiter``, as ``env.step`` ends them: the last segment of the text that
      was split, when it lacks it, has its trailing whitespace replaced by it.

    ``split_response("Q\n", "<think>\nA.\n\nB.\n</think>\nSo \\boxed{2}", ...)`` → prefix
    ``"Q\n<think>\n"``, segments ``("A.\n\n", "B.\n\n")``, tail ``"</think>\nSo \\boxed{2}"``.
    """
    open_tag, close_tag = think_tags
    if isinstance(response, str):
        close = response.find(close_tag)
        opened = response.find(open_tag, 0, close if close >= 0 else len(response))
        think = close >= 0 or opened >= 0 or prompt.rstrip().endswith(open_tag)
    else:
        think = False
    begin = 0
    if think:
        begin = 0 if opened < 0 else opened + len(open_tag)
        end = close if close >= 0 else len(response)
        block = response[begin:end]
        begin += len(block) - len(block.lstrip())  # the whitespace after the open tag belongs to the prefix
        raw = split_segments(block.lstrip(), delimiter)
    elif isinstance(response, str):
        raw = split_segments(response, delimiter)
    else:
        raw = [s if s.endswith(delimiter) else s + delimiter for s in response]
        response = "".join(raw)
    spans = char_spans(raw, begin)
    cut = list(raw)
    if cut and not cut[-1].endswith(delimiter):
        cut[-1] = cut[-1].rstrip() + delimiter
    R = len(cut) if think else reasoning_length(cut, final_answer)
    reasoning_end = spans[R - 1][1] if R else begin
    return SplitResponse(prefix=prompt + response[:begin], segments=tuple(cut[:R]), spans=tuple(spans[:R]),
                         after=tuple(cut[R:]), tail=response[reasoning_end:], think=think,
                         truncated=think and close < 0)


def segment_char_ends(segments: Sequence[str], start: int = 0) -> list[int]:
    """Character offset of the end of each segment, counting from ``start`` (e.g. ``len(q)``)."""
    ends = []
    position = start
    for segment in segments:
        position += len(segment)
        ends.append(position)
    return ends


def char_spans(segments: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    """``(begin, end)`` character span of each segment, counting from ``start``."""
    ends = segment_char_ends(segments, start)
    begins = [start, *ends][: len(ends)]
    return list(zip(begins, ends, strict=True))


def char_to_token_boundaries(offsets: Sequence[tuple[int, int]], char_positions: Sequence[int]) -> list[int]:
    """Map character boundaries to token boundaries (index of the first token starting at or after).

    ``offsets`` are per-token ``(start, end)`` character offsets (``return_offsets_mapping``).
    Zero-width tokens (special tokens, ``(0, 0)``) are never the first token of a boundary; a
    boundary after the last token maps to ``len(offsets)``. Example: tokens ``<s>|a|b.\\n\\n|c`` with
    offsets ``(0,0) (0,1) (1,5) (5,6)``: character 5 (start of ``c``) → token 3; character 3 (inside
    ``b.\\n\\n``) → token 3 as well, since that token starts at 1.
    """
    real = [i for i, (begin, end) in enumerate(offsets) if end > begin]
    starts = [offsets[i][0] for i in real]
    if any(b < a for a, b in zip(starts, starts[1:], strict=False)):
        raise ScorerError(f"token offsets must be non-decreasing, got starts {starts[:20]}...")
    boundaries = []
    for position in char_positions:
        k = bisect.bisect_left(starts, position)
        boundaries.append(real[k] if k < len(real) else len(offsets))
    return boundaries


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenizer(text)`` with special tokens (BOS), plus character offsets (fast tokenizers only)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ScorerError(
            f"the scorer needs a fast tokenizer (offset mappings), got {type(tokenizer).__name__}: "
            "save the model with a tokenizer.json"
        )
    encoding = tokenizer(text, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]


RETOKENISED_CHARS = 256
"""How far before the old end :func:`extend_tokens` starts re-tokenising."""


def extend_tokens(tokenizer: Any, old_text: str, old_ids: Sequence[int], old_offsets: Sequence[tuple[int, int]],
                  text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenize_with_offsets(tokenizer, text)`` for a ``text`` that extends ``old_text`` (tokenised as
    ``old_ids``, ``old_offsets``), re-tokenising only its tail: O(segment) per step, not O(trace).

    The tail starts at ``c``, the start of a token about ``RETOKENISED_CHARS`` before the old end.
    It is used only where it is exact: ``old_text[c:]`` alone must give exactly ``old_ids`` from
    ``c`` on, so the tokenizer splits there; text appended far after ``c`` cannot move that split
    (a merge across the old end only rewrites the tokens after ``c``). Otherwise (a short text, a
    special token at the end, a split that does not hold) the whole text is tokenised.
    """
    cut = len(old_text) - RETOKENISED_CHARS
    if cut <= 0 or not old_offsets or old_offsets[-1][1] <= old_offsets[-1][0]:
        return tokenize_with_offsets(tokenizer, text)
    j = len(old_offsets)  # the first real token that starts at or after cut, found from the end
    for i in range(len(old_offsets) - 1, -1, -1):
        a, b = old_offsets[i]
        if b > a:
            if a < cut:
                break
            j = i
    if j == len(old_offsets):
        return tokenize_with_offsets(tokenizer, text)
    c = old_offsets[j][0]

    def tail(part: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoding["input_ids"]), [(a + c, b + c) for a, b in encoding["offset_mapping"]]

    if tail(old_text[c:]) != (list(old_ids[j:]), [tuple(o) for o in old_offsets[j:]]):
        return tokenize_with_offsets(tokenizer, text)
    ids, offsets = tail(text[c:])
    return list(old_ids[:j]) + ids, list(old_offsets[:j]) + offsets


def tokenize_with_boundaries(
    tokenizer: Any, prefix_text: str, segments: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Tokenise ``prefix_text + "".join(segments)`` once; return ``(ids, boundaries)``.

    ``boundaries[t]`` (t = 0..T) is the number of tokens of ``q + τ≤t``: the token index where
    segment t+1 starts, so ``ids[:boundaries[t]]`` is the prefix that point t scores against and
    ``boundaries[T] == len(ids)``.
    """
    ids, offsets = tokenize_with_offsets(tokenizer, prefix_text + "".join(segments))
    ends = [len(prefix_text), *segment_char_ends(segments, len(prefix_text))]
    return ids, char_to_token_boundaries(offsets, ends)
