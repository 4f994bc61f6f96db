"""transformers scorer: J at every scored point of a response from ONE forward pass (REPRO_SPEC §7).

Batch scoring lays one response out as a tree, ``[q + τ, a', a', …, a']`` with ``a' = a[:-1]``, one
copy per point (the baseline point 0 included), under a 4D **float additive** attention mask: copy
``k`` sees the prefix tokens ``q + τ≤t_k`` and its own causal past, with position ids continuing
from the boundary. The log-prob of the first answer token comes from the prefix token just before
the boundary (its causal context is exactly ``q + τ≤t_k``), the others from the copy, which is why
the copy can drop the answer's last token. Cost: about ``|q+τ| + M·(|a|−1)`` tokens instead of the
``M·|q+τ|/2`` of one pass per point.

Online scoring (:class:`HFSession`) keeps a ``DynamicCache`` of ``q + τ≤t``; each step scores the
answer against the cache and crops the answer off again, so it is never committed.

Consistency between the two: a session re-tokenises ``q + τ≤t`` at each step, batch scoring
tokenises ``q + τ≤T`` once and cuts it at the boundaries. The two agree (to float rounding) whenever
the tokenisation of ``q + τ≤t`` is a prefix of that of ``q + τ≤T``, which holds at blank-line
boundaries for the usual pre-tokenisers; a token merged across a boundary (e.g. a question ending
in ``"?"`` and reasoning starting with ``"\\n\\n"``) makes them differ at that point.

``ScorerConfig.timeout_s`` is not enforced here: a local forward pass cannot be interrupted safely;
the limit applies to the vLLM and server backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro_env.errors import ConfigError, ContextLengthError, ScorerError
from repro_env.scoring.base import BUNDLED_MODEL, ScorerConfig, ScoreRequest, ScoreResult, StepScore
from repro_env.segments import char_to_token_boundaries, tokenize_with_boundaries, tokenize_with_offsets

MAX_ROW_TOKENS = 4096
"""Longest tree row; more points than fit are split over several rows (each repeats the prefix)."""
MAX_MASK_ELEMENTS = 1 << 26
"""Rows per forward are capped so that the (B, L, L) float mask stays under 256 MB."""


def tree_position_ids(num_prefix: int, copy_boundaries: Sequence[int], copy_len: int,
                      length: int) -> torch.Tensor:
    """Position ids of a tree row: prefix ``0..N−1``; copy k ``b_k..b_k+C−1``; padding 0. (length,)"""
    positions = torch.zeros(length, dtype=torch.long)  # (L,)
    positions[:num_prefix] = torch.arange(num_prefix)
    offsets = torch.arange(copy_len)  # (C,)
    for k, boundary in enumerate(copy_boundaries):
        start = num_prefix + k * copy_len
        positions[start:start + copy_len] = boundary + offsets
    return positions


def tree_attention_mask(num_prefix: int, copy_boundaries: Sequence[int], copy_len: int, length: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (length, length) mask of a tree row: 0 where attention is allowed, ``finfo.min`` elsewhere.

    Query i may see key j iff: both are prefix tokens and j ≤ i (causal); or i is in copy k, j is a
    prefix token and j < b_k (copy k continues ``q + τ≤t_k``); or i and j are in the same copy and
    j ≤ i. Padding tokens see only themselves, so that no row is fully blocked.
    Float, never bool: a bool 4D mask is silently misread by eager attention (STACK_NOTES).
    """
    blocked = torch.finfo(dtype).min
    mask = torch.full((length, length), blocked, dtype=dtype)  # (L, L)

    def causal(n: int) -> torch.Tensor:
        return torch.full((n, n), blocked, dtype=dtype).triu_(1)  # (n, n)

    mask[:num_prefix, :num_prefix] = causal(num_prefix)
    own = causal(copy_len)  # (C, C)
    for k, boundary in enumerate(copy_boundaries):
        start = num_prefix + k * copy_len
        mask[start:start + copy_len, :boundary] = 0.0
        mask[start:start + copy_len, start:start + copy_len] = own
    end = num_prefix + len(copy_boundaries) * copy_len
    mask[end:, end:].fill_diagonal_(0.0)
    return mask


@dataclass(frozen=True)
class _TreeRow:
    """One forward row: a response's prefix plus answer copies for some of its points."""

    request: int
    prefix_ids: list[int]
    copy_boundaries: list[int]
    copy_len: int

    @property
    def length(self) -> int:
        return len(self.prefix_ids) + len(self.copy_boundaries) * self.copy_len


@dataclass(frozen=True)
class TokenizedRequest:
    """A :class:`ScoreRequest` after tokenisation (see ``segments.tokenize_with_boundaries``)."""

    ids: list[int]
    """``q + τ≤T`` with special tokens."""
    boundaries: list[int]
    """(T + 1,) tokens in ``q + τ≤t`` for t = 0..T."""
    answer_ids: list[int]
    """``a`` without special tokens."""
    points: tuple[int, ...]
    """Scored points, 1-based, sorted and unique."""


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """H = −Σ p log p per row, from log-probs. (K, V) → (K,)"""
    return -(log_probs.exp() * log_probs).sum(-1)  # (K,)


class HFScorer:
    """J (REPRO_SPEC §2) with a transformers causal LM; implements ``repro_env.scoring.base.Scorer``.

    The model must compute logits as ``output_embeddings(last_hidden_state)`` (Llama, Mistral,
    Qwen2/3 …): only the positions that J and the entropies need go through the LM head.
    """

    def __init__(self, config: ScorerConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(self._model_dir(config))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, config.dtype), attn_implementation=config.attn_implementation
            )
        except (OSError, ValueError) as e:
            raise ScorerError(f"could not load model '{config.model}' from {path}: {e}") from e
        self.model.eval()
        self._setup(config)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, config: ScorerConfig | None = None) -> HFScorer:
        """Wrap an in-memory causal LM (shared with a trainer, or a benchmark's random model).

        ``tokenizer`` may be ``None`` when only :meth:`score_tokens` is used. The model's train/eval
        mode is left as it is (a trainer owns it); scoring runs under ``torch.no_grad``.
        """
        scorer = cls.__new__(cls)
        scorer.model, scorer.tokenizer = model, tokenizer
        device = str(next(model.parameters()).device)
        scorer._setup(config or ScorerConfig(model="<in-memory>", device=device))
        return scorer

    def _setup(self, config: ScorerConfig) -> None:
        self.config = config
        self.model.to(config.device)
        self.device = torch.device(config.device)
        self.pad_id = (getattr(self.tokenizer, "pad_token_id", None) or 0)
        limit = self.model.config.max_position_embeddings
        if config.max_length is not None and config.max_length > limit:
            raise ConfigError(
                f"field 'max_length' must be <= the model's max_position_embeddings ({limit}), "
                f"got {config.max_length!r} (int)"
            )
        self.max_length: int = config.max_length or limit
        # Bumped by reload_weights: a session opened before it holds a stale cache and refuses to go on.
        self.weights_version = 0

    @staticmethod
    def _model_dir(config: ScorerConfig) -> str | Path:
        if config.model == BUNDLED_MODEL:
            from repro_env.assets import bundled_model_dir

            return bundled_model_dir()
        return config.model

    # -- shared pieces -------------------------------------------------------------------------

    def answer_ids(self, answer: str) -> list[int]:
        """``a`` tokenised without special tokens (no BOS inside the answer span, §1)."""
        ids = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ScorerError(f"the answer {answer!r} tokenises to no tokens; expected a non-empty answer")
        return ids

    def check_length(self, num_prefix: int, num_answer: int, question: str) -> None:
        """Raise ``ContextLengthError`` when ``q + τ`` plus one answer copy exceeds ``max_length``."""
        if num_prefix + num_answer > self.max_length:
            raise ContextLengthError(
                f"prefix of {num_prefix} tokens + answer of {num_answer} tokens = "
                f"{num_prefix + num_answer} tokens exceeds max_length={self.max_length} "
                f"(question starting {question[:40]!r}); shorten the reasoning or raise max_length"
            )

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of selected hidden states. (K, H) → (K, V)"""
        logits = self.model.get_output_embeddings()(hidden)  # (K, V)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    @staticmethod
    def _finite(values: torch.Tensor, what: str) -> torch.Tensor:
        if not torch.isfinite(values).all():
            raise ScorerError(f"the scorer model returned non-finite {what}: {values.tolist()[:8]}; "
                              "check the weights (NaN after an update?) or use dtype float32")
        return values

    def reload_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        """Copy a trainer's policy weights into the scorer (the paper scores with the current policy).

        Open sessions hold caches of the old weights and raise on their next ``append``.
        """
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ScorerError(f"reload_weights: the state dict does not fit the scorer model: {e}") from e
        self.weights_version += 1

    load_state_dict = reload_weights

    # -- batch scoring -------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """J_0 and J at each request's points, plus all first-token entropies (REPRO_SPEC §2, §7).

            J_t = (1/|a|) · Σ_i log π(a_i | q, τ≤t, a_<i)

        about one forward pass over ``q + τ`` per response (tree rows, batched by ``batch_size``).
        """
        return self.score_tokens([self._prepare(request) for request in requests])

    def score_tokens(self, prepared: Sequence[TokenizedRequest]) -> list[ScoreResult]:
        """:meth:`score` on already tokenised requests (no length or point checks)."""
        rows = [row for i, p in enumerate(prepared) for row in self._rows(i, p)]
        log_probs: dict[tuple[int, int], float] = {}
        entropies: dict[int, np.ndarray] = {}
        for batch in self._batches(rows):
            self._run_tree_batch(batch, [prepared[row.request] for row in batch], log_probs, entropies)
        results = []
        for i, p in enumerate(prepared):
            J = [log_probs[(i, p.boundaries[t])] for t in (0, *p.points)]
            results.append(ScoreResult(J=np.asarray(J, dtype=np.float64), points=p.points,
                                       entropies=entropies[i], num_tokens=len(p.ids)))
        return results

    def _prepare(self, request: ScoreRequest) -> TokenizedRequest:
        ids, boundaries = tokenize_with_boundaries(self.tokenizer, request.question, request.segments)
        answer = self.answer_ids(request.answer)
        points = tuple(request.resolved_points())
        T = len(request.segments)
        if list(points) != sorted(set(points)) or any(not 1 <= t <= T for t in points):
            raise ScorerError(
                f"ScoreRequest.points must be sorted unique segment indices in 1..{T}, got {points}")
        if boundaries[0] == 0:
            raise ScorerError("the question tokenises to no tokens and the tokenizer adds no BOS: "
                              "J_0 needs at least one token before the answer")
        self.check_length(len(ids), len(answer), request.question)
        return TokenizedRequest(ids, boundaries, answer, points)

    @staticmethod
    def _rows(request: int, p: TokenizedRequest) -> Iterator[_TreeRow]:
        copy_len = len(p.answer_ids) - 1
        # Distinct boundaries only: two points at the same token position share one copy.
        copies = sorted({p.boundaries[t] for t in (0, *p.points)})
        per_row = max(1, (MAX_ROW_TOKENS - len(p.ids)) // copy_len) if copy_len else len(copies)
        for start in range(0, len(copies), per_row):
            yield _TreeRow(request, p.ids, copies[start:start + per_row], copy_len)

    def _batches(self, rows: list[_TreeRow]) -> Iterator[list[_TreeRow]]:
        rows = sorted(rows, key=lambda row: -row.length)  # similar lengths together: less padding
        batch: list[_TreeRow] = []
        for row in rows:
            longest = batch[0].length if batch else row.length
            if batch and (len(batch) == self.config.batch_size
                          or (len(batch) + 1) * longest * longest > MAX_MASK_ELEMENTS):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    @torch.no_grad()
    def _run_tree_batch(self, batch: list[_TreeRow], prepared: list[TokenizedRequest], log_probs: dict,
                        entropies: dict) -> None:
        """One forward over a padded batch of tree rows; fills J log-probs and entropies."""
        length = max(row.length for row in batch)
        dtype = self.model.dtype
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)  # (B, L)
        position_ids = torch.zeros(len(batch), length, dtype=torch.long)  # (B, L)
        mask = torch.empty(len(batch), 1, length, length, dtype=dtype)  # (B, 1, L, L)
        for r, (row, p) in enumerate(zip(batch, prepared, strict=True)):
            copies = p.answer_ids[:-1] * len(row.copy_boundaries)
            input_ids[r, :row.length] = torch.tensor(row.prefix_ids + copies)
            layout = (len(row.prefix_ids), row.copy_boundaries, row.copy_len, length)
            position_ids[r] = tree_position_ids(*layout)  # (L,)
            mask[r, 0] = tree_attention_mask(*layout, dtype=dtype)  # (L, L)
        hidden = self.model.base_model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
        ).last_hidden_state  # (B, L, H)
        for r, (row, p) in enumerate(zip(batch, prepared, strict=True)):
            self._read_row(row, hidden[r], p.boundaries, p.answer_ids, log_probs, entropies)

    def _read_row(self, row: _TreeRow, hidden: torch.Tensor, boundaries: list[int], answer: list[int],
                  log_probs: dict, entropies: dict) -> None:
        N, C = len(row.prefix_ids), row.copy_len
        # Logit rows: the prefix token before each copy's boundary, then each copy's C tokens;
        # the first row of a response also takes the positions before every segment (entropies).
        predictors = []
        for k, boundary in enumerate(row.copy_boundaries):
            predictors += [boundary - 1, *range(N + k * C, N + (k + 1) * C)]
        need_entropy = row.request not in entropies
        segment_starts = [b - 1 for b in boundaries[:-1]] if need_entropy else []
        logits = self.head_logits(hidden[predictors + segment_starts])  # (K, V)
        all_log_probs = torch.log_softmax(logits.float(), dim=-1)  # (K, V)
        num_scored = len(predictors)
        targets = torch.tensor(answer * len(row.copy_boundaries), device=logits.device)  # (M·|a|,)
        token_lp = all_log_probs[:num_scored].gather(1, targets[:, None])[:, 0]  # (M·|a|,)
        token_lp = self._finite(token_lp, "answer log-probs")
        J = token_lp.view(len(row.copy_boundaries), len(answer)).mean(1)  # (M,)
        for boundary, value in zip(row.copy_boundaries, J.tolist(), strict=True):
            log_probs[(row.request, boundary)] = value
        if need_entropy:
            H = self._finite(_entropy(all_log_probs[num_scored:]), "entropies")  # (T,)
            entropies[row.request] = H.double().cpu().numpy()

    # -- online scoring ------------------------------------------------------------------------

    def session(self, question: str, answer: str) -> HFSession:
        """Start an episode: caches ``q`` and computes J_0 at once."""
        return HFSession(self, question, answer)

    def sessions_append(self, sessions: Sequence[HFSession], segments: Sequence[str],
                        score: Sequence[bool] | None = None) -> list[StepScore]:
        """Append one segment to each session; equal to calling ``append`` on each (a loop)."""
        score = [True] * len(sessions) if score is None else list(score)
        if not len(sessions) == len(segments) == len(score):
            raise ScorerError(f"sessions_append needs one segment and one score flag per session, got "
                              f"{len(sessions)} sessions, {len(segments)} segments, {len(score)} flags")
        return [s.append(seg, flag) for s, seg, flag in zip(sessions, segments, score, strict=True)]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class HFSession:
    """Incremental scoring of one episode over a ``DynamicCache`` of ``q + τ≤t`` (REPRO_SPEC §7)."""

    def __init__(self, scorer: HFScorer, question: str, answer: str) -> None:
        from transformers import DynamicCache

        self.scorer = scorer
        self.question = question
        self._answer = scorer.answer_ids(answer)
        self._weights_version = scorer.weights_version
        self._text = question
        self._ids: list[int] = []
        self._cache = DynamicCache(config=scorer.model.config)
        ids, _ = tokenize_with_offsets(scorer.tokenizer, question)
        if not ids:
            raise ScorerError("the question tokenises to no tokens and the tokenizer adds no BOS: "
                              "J_0 needs at least one token before the answer")
        scorer.check_length(len(ids), len(self._answer), question)
        self.J_baseline: float = self._advance(ids, None, score=True)[0]
        self.total_tokens: int = len(ids)

    def append(self, segment: str, score: bool = True) -> StepScore:
        """Add ``segment`` to the prefix; J against ``q + τ≤t`` (if ``score``) and its first-token entropy.

        Raises ``ContextLengthError`` (state unchanged) when ``q + τ≤t + a`` exceeds ``max_length``.
        """
        if self._cache is None:
            raise ScorerError("append on a closed session; start a new one with scorer.session(...)")
        if self._weights_version != self.scorer.weights_version:
            raise ScorerError("the scorer's weights were reloaded after this session started; "
                              "its cache is stale: start a new session")
        text = self._text + segment
        ids, offsets = tokenize_with_offsets(self.scorer.tokenizer, text)
        self.scorer.check_length(len(ids), len(self._answer) if score else 0, self.question)
        segment_start = char_to_token_boundaries(offsets, [len(self._text)])[0]
        J, entropy = self._advance(ids, segment_start, score)
        added = len(ids) - segment_start
        self._text, self.total_tokens = text, len(ids)
        return StepScore(J=J, entropy=entropy, segment_tokens=added, total_tokens=len(ids))

    @torch.no_grad()
    def _advance(self, ids: list[int], segment_start: int | None, score: bool) -> tuple[float, float]:
        """Make the cache hold ``ids``; return (J against it or nan, entropy at ``segment_start``)."""
        scorer = self.scorer
        # Re-tokenising may change tokens before the old end (a merge across the boundary): keep
        # only the common part, and recompute the token before the segment to read its entropy.
        keep = min(_common_prefix(self._ids, ids), len(ids) - 1)
        if segment_start is not None:
            keep = min(keep, segment_start - 1)
        self._crop(keep)
        tail = self._answer[:-1] if score else []
        inputs = ids[keep:] + tail
        hidden = scorer.model.base_model(
            input_ids=torch.tensor([inputs], device=scorer.device),  # (1, n)
            position_ids=torch.arange(keep, keep + len(inputs), device=scorer.device)[None],  # (1, n)
            past_key_values=self._cache, use_cache=True,
        ).last_hidden_state[0]  # (n, H)
        self._ids = list(ids)
        self._crop(len(ids))  # the answer is scored, never committed
        last = len(ids) - 1 - keep
        rows = ([segment_start - 1 - keep] if segment_start is not None else []) + (
            list(range(last, last + len(self._answer))) if score else [])
        log_probs = torch.log_softmax(scorer.head_logits(hidden[rows]).float(), dim=-1)  # (K, V)
        entropy = float("nan")
        if segment_start is not None:
            entropy = float(scorer._finite(_entropy(log_probs[:1]), "entropies")[0])
            log_probs = log_probs[1:]
        J = float("nan")
        if score:
            targets = torch.tensor(self._answer, device=log_probs.device)  # (|a|,)
            token_lp = log_probs.gather(1, targets[:, None])[:, 0]  # (|a|,)
            J = float(scorer._finite(token_lp, "answer log-probs").mean())
        return J, entropy

    def _crop(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (5.19's ``crop`` takes a negative count)."""
        excess = self._cache.get_seq_length() - length
        if excess > 0:
            self._cache.crop(-excess)

    def close(self) -> None:
        """Free the cache."""
        self._cache = None
        self._ids = []
