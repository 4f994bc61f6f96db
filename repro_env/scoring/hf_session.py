"""Online scoring with the transformers scorer: one cached session per episode (REPRO_SPEC §7).

An :class:`HFSession` keeps the keys/values of ``q + τ≤t``; each step feeds the new tokens plus
``a'`` against the cache and commits only the new prefix tokens, never the answer.
:meth:`HFScorer.sessions_append` (the vector env's step, :func:`step_pool_sessions`) runs many
sessions in one forward: their caches are the rows of one :class:`SessionPool`, each row's new keys
and values written in place after its own prefix, inputs right-padded, under a float 4D mask.
Prefixes are copied only when the set of sessions stepped together changes. A single ``append`` is
the same code with a pool of one.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, DynamicLayer

from repro_env.errors import ScorerError
from repro_env.kv_cache import grown
from repro_env.scoring.base import StepScore, append_flags
from repro_env.scoring.prefill import finite_values, next_token_entropy

if TYPE_CHECKING:
    from repro_env.scoring.hf import HFScorer


def open_pool_sessions(scorer: HFScorer, pairs: Sequence[tuple[str, str]]) -> list[HFSession]:
    """:meth:`HFScorer.sessions`: one session per ``(question, answer)``, J_0 in one batched forward."""
    sessions = [HFSession(scorer, question, answer) for question, answer in pairs]
    steps = [session._opening() for session in sessions]
    pool = SessionPool(scorer, len(sessions), room(max((len(step.inputs) for step in steps), default=0)))
    pool.adopt(sessions, range(len(sessions)))
    for session, step, (J, _) in zip(sessions, steps, _run_steps(scorer, steps), strict=True):
        session._commit(step)
        session.J_baseline = J
    return sessions


def step_pool_sessions(scorer: HFScorer, sessions: Sequence[HFSession], segments: Sequence[str],
                       score: Sequence[bool] | None = None) -> list[StepScore]:
    """:meth:`HFScorer.sessions_append`: one segment per session, all scored in one batched forward."""
    score = append_flags(scorer, sessions, segments, score)
    steps = [s._plan(seg, flag) for s, seg, flag in zip(sessions, segments, score, strict=True)]
    outputs = _run_steps(scorer, steps)
    results = []
    for step, (J, entropy) in zip(steps, outputs, strict=True):
        step.session._commit(step)
        added = len(step.ids) - step.segment_start
        results.append(StepScore(J=J, entropy=entropy, segment_tokens=added, total_tokens=len(step.ids)))
    return results


def _run_steps(scorer: HFScorer, steps: Sequence[SessionStep]) -> list[tuple[float, float]]:
    """(J, entropy) per step, in the input order: forwards over ``batch_size`` rows of one pool."""
    if not steps:
        return []
    pool = SessionPool.holding([step.session for step in steps])
    by_row = {step.session._row: step for step in steps}
    outputs: dict[int, tuple[float, float]] = {}
    size, batch = len(pool.members), scorer.config.batch_size
    for start in range(0, size, batch):
        rows = [r for r in range(start, min(start + batch, size)) if r in by_row]
        if rows:  # from its first to its last stepped row; rows between them that nobody steps are free
            chunk = [by_row.get(r) for r in range(rows[0], rows[-1] + 1)]
            outputs.update(_forward_rows(scorer, pool, rows[0], chunk))
    return [outputs[id(step)] for step in steps]


@torch.no_grad()
def _forward_rows(scorer: HFScorer, pool: SessionPool, first: int,
                  steps: Sequence[SessionStep | None]) -> dict[int, tuple[float, float]]:
    """One forward over pool rows ``first..first+B−1``, step r's new tokens (+ answer copy)
    written in place after its ``keep`` cached tokens; a free row (``None``) is fed one padding
    token at position 0 and read by nobody. (``{id(step): (J, entropy)}``)

    Row r's inputs take positions ``keep_r, keep_r+1, …`` (cached keys already carry their
    rotary positions), so query i of row r sees exactly its keys ``≤ keep_r + i``: its cached
    prefix and its own inputs up to i (:func:`session_attention_mask`).
    """
    keep = [step.keep if step else 0 for step in steps]
    B, Q = len(steps), max(len(step.inputs) if step else 1 for step in steps)
    input_ids = torch.full((B, Q), scorer.pad_id, dtype=torch.long)  # (B, Q)
    for r, step in enumerate(steps):
        if step:
            input_ids[r, :len(step.inputs)] = torch.tensor(step.inputs)
            step.session._valid = step.keep  # positions from keep on are overwritten from here
    keep_t = torch.tensor(keep)  # (B,)
    position_ids = keep_t[:, None] + torch.arange(Q)[None]  # (B, Q)
    cache = pool.cache(first, keep, Q)
    try:
        hidden = scorer.model.base_model(
            input_ids=input_ids.to(scorer.device), position_ids=position_ids.to(scorer.device),
            attention_mask=session_attention_mask(keep_t, Q, scorer.model.dtype).to(scorer.device),
            past_key_values=cache, use_cache=True,
        ).last_hidden_state  # (B, Q, H)
        steps_at = [(r, step) for r, step in enumerate(steps) if step]
        rows, cols = [], []
        for r, step in steps_at:
            rows += [r] * len(step.read_positions)
            cols += step.read_positions
        log_probs = torch.log_softmax(scorer.head_logits(hidden[rows, cols]).float(), dim=-1)  # (K, V)
        outputs, start = {}, 0
        for _, step in steps_at:
            own = log_probs[start:start + len(step.read_positions)]  # (k_r, V)
            start += len(step.read_positions)
            outputs[id(step)] = _read_step(scorer, step, own)
        return outputs
    except BaseException:
        pool.clear(first, keep)  # a failed forward may have written non-finite keys there
        raise


def _read_step(scorer: HFScorer, step: SessionStep, log_probs: torch.Tensor) -> tuple[float, float]:
    """(J or nan, entropy or nan) from a step's log-prob rows: [entropy row], answer rows. (k, V)"""
    entropy = float("nan")
    if step.segment_start is not None:
        entropy = float(finite_values(next_token_entropy(log_probs[:1]), "entropies")[0])
        log_probs = log_probs[1:]
    J = float("nan")
    if step.score:
        targets = torch.tensor(step.session._answer, device=log_probs.device)  # (|a|,)
        token_lp = log_probs.gather(1, targets[:, None])[:, 0]  # (|a|,)
        J = float(finite_values(token_lp, "answer log-probs").mean())
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
class SessionStep:
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

    def _opening(self) -> SessionStep:
        """The first step: ``q`` itself, scored (J_0)."""
        ids, offsets = self.scorer.question_tokens(self.question, len(self._answer))
        return SessionStep(self, self.question, ids, offsets, 0, None, True, ids + self._answer[:-1])

    def append(self, segment: str, score: bool = True) -> StepScore:
        """Add ``segment`` to the prefix; J against ``q + τ≤t`` (if ``score``) and its first-token entropy.

        Raises ``ContextLengthError`` (state unchanged) when ``q + τ≤t + a`` exceeds ``max_length``.
        """
        return self.scorer.sessions_append([self], [segment], [score])[0]

    def _plan(self, segment: str, score: bool) -> SessionStep:
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
        return SessionStep(self, text, ids, offsets, keep, segment_start, score, inputs)

    def _commit(self, step: SessionStep) -> None:
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
