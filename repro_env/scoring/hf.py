"""transformers scorer: J at every scored point of a response from ONE forward pass (REPRO_SPEC §7).

Batch scoring lays one response out as a tree, ``[q + τ, a', a', …, a']`` with ``a' = a[:-1]``, one
copy per point (the baseline point 0 included), under a 4D **float additive** attention mask: copy
``k`` sees the prefix tokens ``q + τ≤t_k`` and its own causal past, with position ids continuing
from the boundary. The log-prob of the first answer token comes from the prefix token just before
the boundary (its causal context is exactly ``q + τ≤t_k``), the others from the copy, which is why
the copy can drop the answer's last token. Cost: about ``|q+τ| + M·(|a|−1)`` tokens instead of the
``M·|q+τ|/2`` of one pass per point.

Online scoring (:class:`HFSession`) keeps the keys/values of ``q + τ≤t``; each step feeds the new
tokens plus ``a'`` against the cache and commits only the new prefix tokens, never the answer.
:meth:`HFScorer.sessions_append` (the vector env's step) runs many sessions in one forward: their
caches are the rows of one :class:`SessionPool`, each row's new keys and values written in place
after its own prefix, inputs right-padded, under a float 4D mask. Prefixes are copied only when the
set of sessions stepped together changes.
A single ``append`` is the same code with a pool of one.

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

import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer

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
from repro_env.scoring.prefill import grown, next_token_entropy, score_prefill

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
        token_lp = self._finite(token_lp, "answer log-probs")
        J = token_lp.view(len(row.copy_boundaries), len(answer)).mean(1)  # (M,)
        for boundary, value in zip(row.copy_boundaries, J.tolist(), strict=True):
            log_probs[(row.request, boundary)] = value
        if need_entropy:
            H = self._finite(next_token_entropy(all_log_probs[num_scored:]), "entropies")  # (T,)
            entropies[row.request] = H.double().cpu().numpy()

    # -- online scoring ------------------------------------------------------------------------

    def session(self, question: str, answer: str) -> HFSession:
        """Start an episode: caches ``q`` and computes J_0 at once."""
        return self.sessions([(question, answer)])[0]

    def sessions(self, pairs: Sequence[tuple[str, str]]) -> list[HFSession]:
        """Start one session per ``(question, answer)``, their J_0 in one batched forward (vector env).

        The sessions' caches are the rows of one pool (:class:`SessionPool`), which their later
        batched steps write to in place.
        """
        sessions = [HFSession(self, question, answer) for question, answer in pairs]
        steps = [session._opening() for session in sessions]
        pool = SessionPool(self, len(sessions), room(max((len(step.inputs) for step in steps), default=0)))
        pool.adopt(sessions, range(len(sessions)))
        for session, step, (J, _) in zip(sessions, steps, self._run_steps(steps), strict=True):
            session._commit(step)
            session.J_baseline = J
        return sessions

    def sessions_append(self, sessions: Sequence[HFSession], segments: Sequence[str],
                        score: Sequence[bool] | None = None) -> list[StepScore]:
        """Append one segment to each session, scoring all of them in one batched forward.

        Equal (to float rounding) to calling ``append`` on each. Every session is tokenised and
        length-checked first: a ``ContextLengthError`` (or any other refusal) leaves all sessions
        unchanged. Sessions run ``config.batch_size`` per forward pass, so a large vector env may
        take a few passes; results are committed only after every pass succeeded.
        """
        score = [True] * len(sessions) if score is None else list(score)
        if not len(sessions) == len(segments) == len(score):
            raise ScorerError(f"sessions_append needs one segment and one score flag per session, got "
                              f"{len(sessions)} sessions, {len(segments)} segments, {len(score)} flags")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ScorerError("sessions_append got the same session twice; append to each session at most "
                              "once per call")
        if any(s.scorer is not self for s in sessions):
            raise ScorerError("sessions_append got a session started by another scorer; "
                              "use that scorer's sessions_append")
        steps = [s._plan(seg, flag) for s, seg, flag in zip(sessions, segments, score, strict=True)]
        outputs = self._run_steps(steps)
        results = []
        for step, (J, entropy) in zip(steps, outputs, strict=True):
            step.session._commit(step)
            added = len(step.ids) - step.segment_start
            results.append(StepScore(J=J, entropy=entropy, segment_tokens=added, total_tokens=len(step.ids)))
        return results

    def _run_steps(self, steps: Sequence[_SessionStep]) -> list[tuple[float, float]]:
        """(J, entropy) per step, in the input order: forwards over ``batch_size`` rows of one pool."""
        if not steps:
            return []
        pool = SessionPool.holding([step.session for step in steps])
        by_row = {step.session._row: step for step in steps}
        outputs: dict[int, tuple[float, float]] = {}
        size, batch = len(pool.members), self.config.batch_size
        for start in range(0, size, batch):
            rows = [r for r in range(start, min(start + batch, size)) if r in by_row]
            if rows:  # from its first to its last stepped row; rows between them that nobody steps are free
                chunk = [by_row.get(r) for r in range(rows[0], rows[-1] + 1)]
                outputs.update(self._forward_rows(pool, rows[0], chunk))
        return [outputs[id(step)] for step in steps]

    @torch.no_grad()
    def _forward_rows(self, pool: SessionPool, first: int,
                      steps: Sequence[_SessionStep | None]) -> dict[int, tuple[float, float]]:
        """One forward over pool rows ``first..first+B−1``, step r's new tokens (+ answer copy)
        written in place after its ``keep`` cached tokens; a free row (``None``) is fed one padding
        token at position 0 and read by nobody. (``{id(step): (J, entropy)}``)

        Row r's inputs take positions ``keep_r, keep_r+1, …`` (cached keys already carry their
        rotary positions), so query i of row r sees exactly its keys ``≤ keep_r + i``: its cached
        prefix and its own inputs up to i (:func:`session_attention_mask`).
        """
        keep = [step.keep if step else 0 for step in steps]
        B, Q = len(steps), max(len(step.inputs) if step else 1 for step in steps)
        input_ids = torch.full((B, Q), self.pad_id, dtype=torch.long)  # (B, Q)
        for r, step in enumerate(steps):
            if step:
                input_ids[r, :len(step.inputs)] = torch.tensor(step.inputs)
                step.session._valid = step.keep  # positions from keep on are overwritten from here
        keep_t = torch.tensor(keep)  # (B,)
        position_ids = keep_t[:, None] + torch.arange(Q)[None]  # (B, Q)
        cache = pool.cache(first, keep, Q)
        try:
            hidden = self.model.base_model(
                input_ids=input_ids.to(self.device), position_ids=position_ids.to(self.device),
                attention_mask=session_attention_mask(keep_t, Q, self.model.dtype).to(self.device),
                past_key_values=cache, use_cache=True,
            ).last_hidden_state  # (B, Q, H)
            steps_at = [(r, step) for r, step in enumerate(steps) if step]
            rows, cols = [], []
            for r, step in steps_at:
                rows += [r] * len(step.read_positions)
                cols += step.read_positions
            log_probs = torch.log_softmax(self.head_logits(hidden[rows, cols]).float(), dim=-1)  # (K, V)
            outputs, start = {}, 0
            for _, step in steps_at:
                own = log_probs[start:start + len(step.read_positions)]  # (k_r, V)
                start += len(step.read_positions)
                outputs[id(step)] = self._read_step(step, own)
            return outputs
        except BaseException:
            pool.clear(first, keep)  # a failed forward may have written non-finite keys there
            raise

    def _read_step(self, step: _SessionStep, log_probs: torch.Tensor) -> tuple[float, float]:
        """(J or nan, entropy or nan) from a step's log-prob rows: [entropy row], answer rows. (k, V)"""
        entropy = float("nan")
        if step.segment_start is not None:
            entropy = float(self._finite(next_token_entropy(log_probs[:1]), "entropies")[0])
            log_probs = log_probs[1:]
        J = float("nan")
        if step.score:
            targets = torch.tensor(step.session._answer, device=log_probs.device)  # (|a|,)
            token_lp = log_probs.gather(1, targets[:, None])[:, 0]  # (|a|,)
            J = float(self._finite(token_lp, "answer log-probs").mean())
        return J, entropy


def session_attention_mask(keep: torch.Tensor, Q: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (B, 1, Q, max(keep) + Q) mask of a batched session step over pool rows.

    Row r's cached prefix is at key positions ``0..keep[r]−1`` and its inputs at ``keep[r]..``:
    query i sees the keys ``j ≤ keep[r] + i``. Later keys of the row (other rows are longer) hold
    stale or zero entries and are blocked. Float, never bool (STACK_NOTES).
    """
    key = torch.arange(int(keep.max()) + Q)  # (K,)
    allowed = key[None, None] <= keep[:, None, None] + torch.arange(Q)[None, :, None]  # (B, Q, K)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, torch.tensor(0.0, dtype=dtype), blocked)[:, None]  # (B, 1, Q, K)


def room(tokens: int) -> int:
    """Buffer capacity for ``tokens`` cached tokens: headroom for a few more steps."""
    return tokens + max(64, tokens // 4)


class SlotLayer(DynamicLayer):
    """One decoder layer's keys/values for a pool of sessions: (rows, kv_heads, capacity, head_dim).

    Row r holds its session's ``q + τ≤t`` at positions ``0..len_r−1``. A forward over rows
    ``first..first+B−1`` (set by :meth:`SessionPool.cache`) writes row r's ``Q`` new entries at
    ``offsets[r]..offsets[r]+Q−1`` in place and attends over the first ``max(offsets) + Q``
    positions of those rows. Buffers start zeroed so that blocked positions stay finite.
    """

    def __init__(self, rows: int, capacity: int) -> None:
        super().__init__()
        self.rows, self.capacity = rows, capacity
        self.first, self.offsets, self.index = 0, [0], None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        heads, dim = key_states.shape[1], key_states.shape[3]
        self.dtype, self.device = key_states.dtype, key_states.device
        self._keys = key_states.new_zeros(self.rows, heads, self.capacity, dim)
        self._values = value_states.new_zeros(self.rows, heads, self.capacity, value_states.shape[3])
        self.is_initialized = True

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` positions in every row (grows by a quarter or more, keeping the contents)."""
        if capacity <= self.capacity:
            return
        size = room(capacity)
        if self.is_initialized:  # rows have different lengths: keep every position
            self._keys, self._values = (grown(self._keys, size, self.capacity, zeros=True),
                                        grown(self._values, size, self.capacity, zeros=True))
        self.capacity = size

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, Q = key_states.shape[0], key_states.shape[2]
        rows = slice(self.first, self.first + B)
        if self.index is None:  # every row writes at the same offset: a plain slice
            start = self.offsets[0]
            self._keys[rows, :, start:start + Q] = key_states
            self._values[rows, :, start:start + Q] = value_states
        else:
            row_index, positions = self.index  # (B, 1), (B, Q)
            self._keys[row_index, :, positions] = key_states.transpose(1, 2)  # (B, Q, heads, d)
            self._values[row_index, :, positions] = value_states.transpose(1, 2)
        end = max(self.offsets) + Q
        self.keys, self.values = self._keys[rows, :, :end], self._values[rows, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return max(self.offsets)


class SessionPool:
    """Sessions whose caches are the rows of one set of :class:`SlotLayer` buffers.

    A step over all of a pool's open sessions (a vector env's step; a single env's session is a pool
    of one) runs on the buffers as they are: no prefix is copied, and the rows of closed sessions
    are fed one padding token while they are at most a quarter of the pool (or one row). New
    sessions (autoresets) are copied into closed rows. Any other step first gathers its sessions
    into a new pool, one copy of their prefixes, after which their steps are in place again: in
    the env, once many episodes have ended without new ones taking their rows.
    A pool holds its sessions weakly; once no more than half of its rows are open, a gather moves
    the rest out too, so that its buffers go.
    """

    def __init__(self, scorer: HFScorer, rows: int, capacity: int) -> None:
        num_layers = scorer.model.config.get_text_config(decoder=True).num_hidden_layers
        self.layers = [SlotLayer(rows, capacity) for _ in range(num_layers)]
        self.device = scorer.device
        self._members: list[weakref.ref | None] = [None] * rows

    @property
    def members(self) -> list[HFSession | None]:
        """The open session of each row (``None``: closed, moved away or gone)."""
        return [None if ref is None else ref() for ref in self._members]

    def adopt(self, sessions: Sequence[HFSession], rows: Sequence[int]) -> None:
        """Make ``sessions`` these rows (their caches must already be there)."""
        for row, session in zip(rows, sessions, strict=True):
            if session._pool is not None and session._pool is not self:
                session._pool.leave(session._row)
            self._members[row] = weakref.ref(session)
            session._pool, session._row = self, row

    def leave(self, row: int) -> None:
        self._members[row] = None

    def fill(self, sessions: Sequence[HFSession], rows: Sequence[int]) -> None:
        """Copy the cached prefixes of ``sessions`` (of other pools) into ``rows``, then adopt them.
        Everything is allocated and copied before any session changes pools."""
        for layer in self.layers:
            layer.reserve(max(s._valid for s in sessions))
        for old in {id(s._pool): s._pool for s in sessions}.values():
            target = [row for row, s in zip(rows, sessions, strict=True) if s._pool is old]
            source = [s._row for s in sessions if s._pool is old]
            length = max(s._valid for s in sessions if s._pool is old)
            for layer, old_layer in zip(self.layers, old.layers, strict=True):
                if old_layer.is_initialized:
                    if not layer.is_initialized:
                        layer.lazy_initialization(old_layer._keys, old_layer._values)
                    layer._keys[target, :, :length] = old_layer._keys[source, :, :length]
                    layer._values[target, :, :length] = old_layer._values[source, :, :length]
        self.adopt(sessions, rows)

    @classmethod
    def holding(cls, sessions: Sequence[HFSession]) -> SessionPool:
        """The pool to step ``sessions`` in, in place.

        The pool most of them share, when every open session of it is stepped, the others (new
        episodes after autoresets) fit its closed rows (they are copied in), and at most a quarter
        of its rows (or one) are left idle. Else a new pool that all of them move into.
        """
        pools = {id(s._pool): s._pool for s in sessions}
        main = max(pools.values(), key=lambda pool: sum(s._pool is pool for s in sessions))
        free = [row for row, member in enumerate(main.members) if member is None]
        if sum(s._pool is main for s in sessions) == len(main._members) - len(free):  # all its open ones
            others = [s for s in sessions if s._pool is not main]
            idle = len(free) - len(others)  # rows fed one padding token: cheaper than a gather while few
            if 0 <= idle <= max(1, len(main._members) // 4):
                if others:
                    main.fill(others, free[:len(others)])
                return main
        new = cls(sessions[0].scorer, len(sessions), room(max(s._valid for s in sessions)))
        new.fill(sessions, range(len(sessions)))
        for old in pools.values():
            rest = [member for member in old.members if member is not None]
            if rest and 2 * len(rest) <= len(old._members):  # mostly dead rows: free them
                cls.holding(rest)
        return new

    def cache(self, first: int, offsets: list[int], Q: int) -> Cache:
        """The pool as the cache of a forward over rows ``first..first+len(offsets)−1``."""
        uniform = min(offsets) == max(offsets)
        index = None if uniform else (torch.arange(first, first + len(offsets), device=self.device)[:, None],
                                      torch.tensor(offsets, device=self.device)[:, None]
                                      + torch.arange(Q, device=self.device)[None])  # (B, 1), (B, Q)
        for layer in self.layers:
            layer.reserve(max(offsets) + Q)
            layer.first, layer.offsets, layer.index = first, offsets, index
        return Cache(layers=self.layers)

    def clear(self, first: int, offsets: list[int]) -> None:
        """Zero each row's positions from its offset on (after a failed forward)."""
        for layer in self.layers:
            if layer.is_initialized:
                for r, offset in enumerate(offsets):
                    layer._keys[first + r, :, offset:] = 0
                    layer._values[first + r, :, offset:] = 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (slice comparisons run in C: long traces stay cheap)."""
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo]; the answer is <= hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class _SessionStep:
    """One session's share of a batched forward: what to feed and which hidden states to read."""

    session: HFSession
    text: str
    """``q + τ≤t`` after the step."""
    ids: list[int]
    """Its tokens (special tokens included)."""
    offsets: list[tuple[int, int]]
    """Their character offsets."""
    keep: int
    """Cached tokens kept: the common prefix with the old ids, minus the token before the segment."""
    segment_start: int | None
    """Token index where the new segment starts (``None`` for the question: no entropy)."""
    score: bool
    inputs: list[int]
    """``ids[keep:]`` then ``a[:-1]`` if scored."""

    @property
    def read_positions(self) -> list[int]:
        """Input positions whose logits are read: the token before the segment, then ``|a|`` rows."""
        rows = [self.segment_start - 1 - self.keep] if self.segment_start is not None else []
        if self.score:
            last = len(self.ids) - 1 - self.keep
            rows += range(last, last + len(self.session._answer))
        return rows


class HFSession:
    """Incremental scoring of one episode over cached keys/values of ``q + τ≤t`` (REPRO_SPEC §7).

    The cache is one row of a :class:`SessionPool`. A step over all of the pool's sessions (one
    ``append`` on a pool of one, or :meth:`HFScorer.sessions_append` over a vector env's) writes
    the new tokens there in place; a step over some of them first gathers those into a new pool.
    Either way a step costs its new tokens plus attention over the prefix.
    """

    def __init__(self, scorer: HFScorer, question: str, answer: str) -> None:
        self.scorer = scorer
        self.question = question
        self._answer = scorer.answer_ids(answer)
        self._weights_version = scorer.weights_version
        self._text = question
        self._ids: list[int] = []
        self._offsets: list[tuple[int, int]] = []
        self._pool: SessionPool | None = None
        self._row = 0
        self._valid = 0
        """Cached tokens that hold ``q + τ≤t`` (a failed step may have overwritten the rest)."""
        self.J_baseline = float("nan")
        """J_0, set by ``HFScorer.sessions`` once the question's step has run."""

    def _opening(self) -> _SessionStep:
        """The first step: ``q`` itself, scored (J_0)."""
        ids, offsets = self.scorer.question_tokens(self.question, len(self._answer))
        return _SessionStep(self, self.question, ids, offsets, 0, None, True, ids + self._answer[:-1])

    def append(self, segment: str, score: bool = True) -> StepScore:
        """Add ``segment`` to the prefix; J against ``q + τ≤t`` (if ``score``) and its first-token entropy.

        Raises ``ContextLengthError`` (state unchanged) when ``q + τ≤t + a`` exceeds ``max_length``.
        """
        return self.scorer.sessions_append([self], [segment], [score])[0]

    def _plan(self, segment: str, score: bool) -> _SessionStep:
        """Tokenise ``q + τ≤t`` and decide what to recompute; checks everything, changes nothing."""
        if self._pool is None:
            raise ScorerError("append on a closed session; start a new one with scorer.session(...)")
        if self._weights_version != self.scorer.weights_version:
            raise ScorerError("the scorer's weights were reloaded after this session started; "
                              "its cache is stale: start a new session")
        text, ids, offsets, segment_start = self.scorer.extended_tokens(
            self.question, self._text, self._ids, self._offsets, segment, len(self._answer) if score else 0)
        # Re-tokenising may change tokens before the old end (a merge across the boundary): keep
        # only the common part, and recompute the token before the segment to read its entropy.
        keep = min(_common_prefix(self._ids, ids), len(ids) - 1, segment_start - 1, self._valid)
        inputs = ids[keep:] + (self._answer[:-1] if score else [])
        return _SessionStep(self, text, ids, offsets, keep, segment_start, score, inputs)

    def _commit(self, step: _SessionStep) -> None:
        """Make the step's prefix the session's (its keys/values are already in the pool row)."""
        self._text, self._ids, self._offsets, self._valid = step.text, list(step.ids), step.offsets, len(step.ids)
        self.total_tokens: int = len(step.ids)

    def close(self) -> None:
        """Leave the pool: the row is not stepped again; the pool's buffers go once no open session
        uses them (or at the next gather of the others, when at most half of its rows are open)."""
        if self._pool is not None:
            self._pool.leave(self._row)
        self._pool = None
        self._ids = []
