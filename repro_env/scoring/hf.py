"""transformers scorer: J at every scored point of a response from ONE forward pass (REPRO_SPEC §7).

Batch scoring lays one response out as a tree, ``[q + τ, a', a', …, a']`` with ``a' = a[:-1]``, one
copy per point (the baseline point 0 included), under a 4D **float additive** attention mask: copy
``k`` sees the prefix tokens ``q + τ≤t_k`` and its own causal past, with position ids continuing
from the boundary. The log-prob of the first answer token comes from the prefix token just before
the boundary (its causal context is exactly ``q + τ≤t_k``), the others from the copy, which is why
the copy can drop the answer's last token. Cost: about ``|q+τ| + M·(|a|−1)`` tokens instead of the
``M·|q+τ|/2`` of one pass per point.

Online scoring (``HFScorer.session``, ``sessions_append``) is in :mod:`repro_env.scoring.hf_session`.

Models with sliding-window layers are scored with full attention here, as in batch scoring (the
custom 4D masks replace the model's own).

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

import numpy as np
import torch

from repro_env.assets import resolve_model
from repro_env.config import check_device
from repro_env.errors import ConfigError, ScorerError
from repro_env.scoring.base import (
    ScorerConfig,
    ScoreRequest,
    ScoreResult,
    StepScore,
    TokenizedRequest,
    TokenScorerBase,
)
from repro_env.scoring.hf_session import HFSession, open_pool_sessions, step_pool_sessions
from repro_env.scoring.options import HFOptions
from repro_env.scoring.prefill import finite_values, next_token_entropy, score_prefill

TREE_MAX_TOKENS = 2048
"""Longest tree row (``|q + τ| + M·|a'|``); longer responses are scored by chunked prefill
(``prefill.py``). Measured with ``benchmarks/bench_scoring.py``: see the README's Scoring cost."""
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


class HFScorer(TokenScorerBase):
    """J (REPRO_SPEC §2) with a transformers causal LM; implements ``repro_env.scoring.base.Scorer``.

    The model must compute logits as ``output_embeddings(last_hidden_state)`` (Llama, Mistral,
    Qwen2/3 …): only the positions that J and the entropies need go through the LM head.
    """

    options_class = HFOptions
    """A subclass registered by class alone (``register_scorer("mine", MyScorer)``) inherits it."""

    def __init__(self, config: ScorerConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_device(config.device, "scorer.device", present=True)
        path = resolve_model(config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, config.dtype), attn_implementation=config.options.attn_implementation
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

    # -- shared pieces -------------------------------------------------------------------------

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of selected hidden states. (K, H) → (K, V)"""
        logits = self.model.get_output_embeddings()(hidden)  # (K, V)
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

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
        return self.score_tokens([self.prepare(request) for request in requests])

    def score_tokens(self, prepared: Sequence[TokenizedRequest]) -> list[ScoreResult]:
        """:meth:`score` on already tokenised requests (no length or point checks).

        Short responses go through tree rows, several per forward; longer ones than
        ``TREE_MAX_TOKENS`` through chunked prefill, one at a time (``prefill.py``).
        """
        rows = [self._tree_row(i, p) for i, p in enumerate(prepared)]
        log_probs: dict[tuple[int, int], float] = {}
        entropies: dict[int, np.ndarray] = {}
        for i, row in enumerate(rows):
            if row.length > TREE_MAX_TOKENS:
                J, entropies[i] = score_prefill(self, prepared[i], self.config.options.chunk_tokens)
                log_probs.update({(i, boundary): value for boundary, value in J.items()})
        for batch in self._batches([row for row in rows if row.length <= TREE_MAX_TOKENS]):
            self._run_tree_batch(batch, [prepared[row.request] for row in batch], log_probs, entropies)
        results = []
        for i, p in enumerate(prepared):
            J = [log_probs[(i, p.boundaries[t])] for t in (0, *p.points)]
            results.append(ScoreResult(J=np.asarray(J, dtype=np.float64), points=p.points,
                                       entropies=entropies[i], num_tokens=len(p.ids)))
        return results

    @staticmethod
    def _tree_row(request: int, p: TokenizedRequest) -> _TreeRow:
        # Distinct boundaries only: two points at the same token position share one copy.
        copies = sorted({p.boundaries[t] for t in (0, *p.points)})
        return _TreeRow(request, p.ids, copies, len(p.answer_ids) - 1)

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
        token_lp = finite_values(token_lp, "answer log-probs")
        J = token_lp.view(len(row.copy_boundaries), len(answer)).mean(1)  # (M,)
        for boundary, value in zip(row.copy_boundaries, J.tolist(), strict=True):
            log_probs[(row.request, boundary)] = value
        if need_entropy:
            H = finite_values(next_token_entropy(all_log_probs[num_scored:]), "entropies")  # (T,)
            entropies[row.request] = H.double().cpu().numpy()

    # -- online scoring (repro_env.scoring.hf_session) -----------------------------------------

    def session(self, question: str, answer: str) -> HFSession:
        """Start an episode: caches ``q`` and computes J_0 at once."""
        return self.sessions([(question, answer)])[0]

    def sessions(self, pairs: Sequence[tuple[str, str]]) -> list[HFSession]:
        """Start one session per ``(question, answer)``, their J_0 in one batched forward (vector env).

        The sessions' caches are the rows of one pool (``hf_session.SessionPool``), which their later
        batched steps write to in place.
        """
        return open_pool_sessions(self, pairs)

    def sessions_append(self, sessions: Sequence[HFSession], segments: Sequence[str],
                        score: Sequence[bool] | None = None) -> list[StepScore]:
        """Append one segment to each session, scoring all of them in one batched forward.

        Equal (to float rounding) to calling ``append`` on each. Every session is tokenised and
        length-checked first: a ``ContextLengthError`` (or any other refusal) leaves all sessions
        unchanged. Sessions run ``config.batch_size`` per forward pass, so a large vector env may
        take a few passes; results are committed only after every pass succeeded.
        """
        return step_pool_sessions(self, sessions, segments, score)
