"""Candidate next segments sampled from a language model (the choices of the SB3 bridge).

A proposer continues ``text`` (prompt + reasoning so far) ``k`` times and cuts each continuation
into one segment. A candidate stops at the first of:

- the task delimiter (``"\\n\\n"``), searched in the *decoded characters*: byte-level BPE merges
  ``".\\n\\n"`` into one token, so a delimiter token id would be missed (REPRO_SPEC §1);
- the close of the final answer: after a match of the task's final-answer pattern (``\\boxed{``)
  the braces are counted and the segment ends at the ``}`` that balances it;
- the end-of-text token (kept in the text, so that the env ends the episode);
- ``max_new_tokens``.

Any callable ``propose(text, k, rng) -> list[str]`` can stand in for :class:`LMProposer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from repro_env.config import check
from repro_env.errors import ConfigError

ProposeFn = Callable[[str, int, np.random.Generator], Sequence[str]]
"""``propose(text, k, rng) -> k candidate segments``; draw all randomness from ``rng``."""

StopReason = Literal["delimiter", "final", "eos", "length", "external"]
"""``external``: a plain string from a user ``propose`` callable (where it ends is the callable's choice)."""


@dataclass(frozen=True)
class ProposerConfig:
    """How :class:`LMProposer` samples candidates."""

    max_new_tokens: int = 64
    """Token cap of one candidate (the task's ``limits.max_segment_tokens`` is a good value)."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 samples the model's own distribution (no top-k, no top-p)."""

    def __post_init__(self) -> None:
        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens",
              self.max_new_tokens, "an int >= 1")
        check(isinstance(self.temperature, int | float) and self.temperature > 0, "temperature",
              self.temperature, "a number > 0")


@dataclass(frozen=True)
class Candidate:
    """One proposed segment and what the proposer knows about it."""

    text: str
    """The segment, ending with the delimiter, the final answer's ``}`` or the eos text when it stopped there."""
    num_tokens: int
    """Generated tokens the segment spans (a token that straddles the cut counts)."""
    mean_logprob: float
    """Mean log π(token) over those tokens under the proposer (``nan`` when unknown)."""
    min_logprob: float
    """The least likely token's log-prob (``nan`` when unknown): a slip in a number shows here."""
    stop: StopReason
    """Why the segment ended."""


def find_cut(text: str, delimiter: str, final_answer: re.Pattern[str]) -> tuple[int, StopReason] | None:
    """Where a continuation ends as one segment: ``(end offset, reason)``, or ``None`` if it goes on.

    The delimiter ends a segment only after some non-whitespace text (a continuation that starts
    with blank lines keeps them), and the final answer ends it at the ``}`` that closes the answer.
    """
    start = len(text) - len(text.lstrip())
    delimiter_at = text.find(delimiter, start) if start < len(text) else -1
    delimiter_end = delimiter_at + len(delimiter) if delimiter_at >= 0 else None
    final_end = None
    match = final_answer.search(text)
    if match is not None:
        depth = match.group(0).count("{") - match.group(0).count("}")
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth <= 0:
                final_end = i + 1
                break
        if depth <= 0 and final_end is None:  # a pattern without an opening brace
            final_end = match.end()
    cuts = [(end, reason) for end, reason in ((delimiter_end, "delimiter"), (final_end, "final"))
            if end is not None]
    return min(cuts) if cuts else None


class _SegmentStop:
    """Per-row stopping criterion for ``generate``: a row is done once its text has a cut."""

    def __init__(self, tokenizer: Any, prompt_len: int, delimiter: str, final_answer: re.Pattern[str]):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.delimiter, self.final_answer = delimiter, final_answer

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        done = [find_cut(t, self.delimiter, self.final_answer) is not None for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


class LMProposer:
    """Samples ``k`` candidate segments in one batched ``generate`` call (``num_return_sequences=k``).

    ``model``/``tokenizer``: a transformers causal LM and its tokenizer (an ``HFScorer``'s
    ``.model`` and ``.tokenizer`` can be shared: generation never touches scoring sessions).
    Sampling is seeded from the ``rng`` passed to each call, inside ``torch.random.fork_rng``, so
    the global torch RNG is left as it was and two runs with the same seed propose the same text.
    """

    def __init__(self, model: Any, tokenizer: Any, *, delimiter: str = "\n\n",
                 final_answer: str | re.Pattern[str] = r"\\boxed\{",
                 config: ProposerConfig | None = None) -> None:
        if not isinstance(delimiter, str) or delimiter == "":
            raise ConfigError(f"field 'delimiter' must be a non-empty string, got {delimiter!r}")
        if getattr(tokenizer, "eos_token", None) is None:
            raise ConfigError("the proposer's tokenizer has no eos_token; expected a causal-LM tokenizer "
                              "with one (it ends a candidate that has no text)")
        self.model, self.tokenizer = model, tokenizer
        self.delimiter = delimiter
        self.final_answer = re.compile(final_answer) if isinstance(final_answer, str) else final_answer
        self.config = config or ProposerConfig()
        limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        # Room for the new tokens: a longer text keeps only its latest tokens as the prompt.
        self.max_prompt_tokens = limit - self.config.max_new_tokens
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"field 'max_new_tokens' must be < the model's context ({limit} tokens), "
                              f"got {self.config.max_new_tokens!r} (int)")

    def __call__(self, text: str, k: int, rng: np.random.Generator) -> list[str]:
        return [c.text for c in self.sample(text, k, rng)]

    @torch.no_grad()
    def sample(self, text: str, k: int, rng: np.random.Generator) -> list[Candidate]:
        """``k`` candidates continuing ``text``, with token counts and log-probs."""
        from transformers import GenerationConfig, StoppingCriteriaList

        if not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"field 'k' must be an int >= 1, got {k!r} ({type(k).__name__})")
        ids = list(self.tokenizer(text, verbose=False)["input_ids"])[-self.max_prompt_tokens:]
        device = self.model.device
        input_ids = torch.tensor([ids], device=device)  # (1, P)
        eos_id = self.tokenizer.eos_token_id
        generation = GenerationConfig(
            do_sample=True, temperature=float(self.config.temperature), top_k=0, top_p=1.0,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=eos_id, pad_token_id=self._pad_id(),
            output_logits=True, return_dict_in_generate=True,
        )
        stop = _SegmentStop(self.tokenizer, len(ids), self.delimiter, self.final_answer)
        cache = self._prefill(input_ids[:, :-1], int(k))
        seed = int(rng.integers(2**63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.model.generate(input_ids.expand(int(k), -1), past_key_values=cache,  # (k, P)
                                      attention_mask=torch.ones(int(k), len(ids), dtype=torch.long, device=device),
                                      generation_config=generation,
                                      stopping_criteria=StoppingCriteriaList([stop]))
        new_ids = out.sequences[:, len(ids):]  # (k, N)
        logits = torch.stack(out.logits, dim=1).float()  # (k, N, V)
        token_lp = torch.log_softmax(logits, dim=-1).gather(2, new_ids[:, :, None])[:, :, 0]  # (k, N)
        return [self._candidate(new_ids[i].tolist(), token_lp[i].tolist()) for i in range(int(k))]

    def _prefill(self, prompt_ids: torch.Tensor, k: int) -> Any:
        """The KV cache of all prompt tokens but the last, computed once and repeated for ``k`` rows.

        ``generate`` then only runs the last prompt token, instead of the whole prompt ``k`` times.
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if prompt_ids.shape[1] > 0:
            self.model(input_ids=prompt_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)  # (1, P−1)
        cache.batch_repeat_interleave(k)
        return cache

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def _candidate(self, ids: list[int], log_probs: list[float]) -> Candidate:
        """Cut one generated row into a segment and measure the tokens it spans."""
        eos_id = self.tokenizer.eos_token_id
        ended = eos_id in ids
        if ended:
            ids = ids[:ids.index(eos_id)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = find_cut(text, self.delimiter, self.final_answer)
        if cut is not None:
            text, reason = text[:cut[0]], cut[1]
        elif ended:
            # The model ended its reasoning: keep the eos text so the env terminates the episode.
            text, reason = text + self.tokenizer.eos_token, "eos"
        else:
            reason = "length"
        used = self._tokens_spanned(ids, len(text)) if cut is not None else len(ids) + int(ended)
        spanned = log_probs[:used]
        if not text.strip():
            # Only blank lines before the cap: nothing to append, end the reasoning instead.
            text, reason = self.tokenizer.eos_token, "eos"
        return Candidate(text=text, num_tokens=used,
                         mean_logprob=float(np.mean(spanned)) if spanned else float("nan"),
                         min_logprob=float(np.min(spanned)) if spanned else float("nan"), stop=reason)

    def _tokens_spanned(self, ids: list[int], chars: int) -> int:
        """The fewest leading tokens whose decoded text covers ``chars`` characters."""
        for n in range(1, len(ids) + 1):
            if len(self.tokenizer.decode(ids[:n], skip_special_tokens=True)) >= chars:
                return n
        return len(ids)
