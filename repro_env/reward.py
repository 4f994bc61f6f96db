"""RePro reward math as pure functions: J → scores → segment rewards → advantages (REPRO_SPEC §2–§5).

The flow for one response with reasoning segments ``s_1..s_T``, in one call::

    parts = reward_points(config, J, entropies)      # J: [J_0, J_1..J_T] (§2)
    parts.points                                     # which segment ends are scored (§4: points_for)
    parts.rewards                                    # r̃, one per point (§4: process_rewards over the points)
    parts.segment_rewards, parts.scored              # (T,): r̃ spread over the segments, and the mask

and for a group or batch of responses, the trainer-side advantages (§5): ``grpo_advantages`` /
``token_advantages`` for GRPO (lists of variable-length trajectories), ``ppo_advantages`` for PPO
(padded ``(B, L)`` arrays with a mask; numpy or torch).

Every J-consuming function validates its input and raises :class:`RewardInputError` naming the
argument, the index and the value: a NaN never leaks into a reward. ``J`` is a mean log-prob, so
``J ≤ 0``; values in ``(0, J_POSITIVE_TOLERANCE]`` are float error of a log-softmax and are read as
0, larger positive values are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from repro_env.config import check, describe
from repro_env.errors import RewardInputError

Selection = Literal["all", "topk_entropy", "entropy_threshold"]
SELECTIONS: tuple[str, ...] = ("all", "topk_entropy", "entropy_threshold")

J_POSITIVE_TOLERANCE = 1e-3
"""Largest positive J accepted (read as 0): fp32 log-softmax error; bf16 scorers must upcast first."""
ADV_EPS = 1e-6
"""The 1e-6 in the GRPO normalisations ``(x − mean) / (std + 1e-6)`` (REPRO_SPEC §5)."""
WHITEN_EPS = 1e-8


@dataclass(frozen=True)
class RewardConfig:
    """How J becomes a process reward and how much that reward weighs (REPRO_SPEC §3–§5)."""

    alpha: float = 0.1
    """α: weight of the process advantage in Â = A + α·Ã."""
    stability_weight: float = 0.1
    """w: S_t = (1−w)·S_magn,t + w·S_stab,t, in [0, 1]."""
    ema: float = 0.01
    """β: EMA smoothing of J before Kendall's tau, y_i = β·J_i + (1−β)·y_{i−1}, in (0, 1]."""
    selection: Selection = "all"
    """Which segment ends are scored: all, the top-k by first-token entropy, or those above a threshold."""
    k: int = 20
    """``topk_entropy``: how many non-final segments to score (the final one is always scored)."""
    entropy_threshold: float = 0.0
    """``entropy_threshold``: score a segment when its first-token entropy is >= this (nats)."""
    eps: float = 1e-6
    """ε in Δ_t = (J_t − J_0) / max(|J_0|, ε): keeps Δ finite when the baseline is already certain."""

    def __post_init__(self) -> None:
        check(_is_number(self.alpha) and 0.0 <= self.alpha < np.inf, "alpha", self.alpha, "a number >= 0")
        check(_is_number(self.stability_weight) and 0.0 <= self.stability_weight <= 1.0, "stability_weight",
              self.stability_weight, "a number in [0, 1]")
        check(_is_number(self.ema) and 0.0 < self.ema <= 1.0, "ema", self.ema, "a number in (0, 1]")
        check(self.selection in SELECTIONS, "selection", self.selection,
              f"one of {', '.join(repr(s) for s in SELECTIONS)}")
        check(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 0, "k", self.k,
              "an int >= 0")
        check(_is_number(self.entropy_threshold) and np.isfinite(self.entropy_threshold), "entropy_threshold",
              self.entropy_threshold, "a finite number")
        check(_is_number(self.eps) and 0.0 < self.eps < np.inf, "eps", self.eps, "a number > 0")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------------------
# Input checks


def check_vector(x: ArrayLike, name: str, *, min_len: int = 0, what: str = "a finite number") -> np.ndarray:
    """``x`` as a finite float64 1-D array, else RewardInputError naming ``name[i]`` and the value."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise RewardInputError(f"{name} must be a 1-D sequence of numbers, got {describe(x)}") from e
    if arr.ndim != 1:
        raise RewardInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_len:
        raise RewardInputError(f"{name} must have at least {min_len} values, got {arr.size}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise RewardInputError(f"{name}[{i}] must be {what}, got {float(arr[i])!r}")
    return arr


def _check_J(J: ArrayLike, name: str = "J") -> np.ndarray:
    """[J_0, J_1..J_T] as float64 (T ≥ 1), finite, ≤ 0 up to ``J_POSITIVE_TOLERANCE`` (clipped to 0)."""
    arr = check_vector(J, name, min_len=2, what="a finite mean log-prob (<= 0)")
    bad = np.flatnonzero(arr > J_POSITIVE_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise RewardInputError(
            f"{name}[{i}] must be a mean log-prob <= 0 (tolerance {J_POSITIVE_TOLERANCE}), "
            f"got {float(arr[i])!r}; pass log-probs, not probabilities")
    return np.minimum(arr, 0.0)


def _check_count(value: Any, name: str) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise RewardInputError(f"{name} must be an int >= 0, got {describe(value)}")


def _check_range(value: float, name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = _is_number(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise RewardInputError(f"{name} must be a number in {bracket}{lo}, {hi}], got {describe(value)}")


# ---------------------------------------------------------------------------------------------
# Scores and process rewards (§3, §4)


def magnitude_scores(J: ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """Magnitude score per scored point (REPRO_SPEC §3)::

        Δ_t = (J_t − J_0) / max(|J_0|, ε)
        S_magn,t = tanh(Δ_t − 1) + 1          ∈ [0, 1]  (Δ=1 → 1, Δ=0 → 0.238, Δ=−1 → 0.036)

    ``J``: (T+1,) = [J_0, J_1..J_T], the baseline then J at the scored points only. Returns (T,).
    """
    if not (_is_number(eps) and 0.0 < eps < np.inf):
        raise RewardInputError(f"eps must be a number > 0, got {describe(eps)}")
    j = _check_J(J)
    delta = (j[1:] - j[0]) / max(abs(j[0]), eps)  # (T,)
    return np.tanh(delta - 1.0) + 1.0


def ema_path(J: ArrayLike, ema: float = 0.01) -> np.ndarray:
    """EMA of J (REPRO_SPEC §3): y_0 = J_0, y_i = β·J_i + (1−β)·y_{i−1}. Returns (T+1,).

    Computed as y_i = y_{i−1} + β·(J_i − y_{i−1}) (the same number): a constant J then gives an
    exactly constant y, so Kendall's tau sees true ties instead of rounding noise.
    """
    _check_range(ema, "ema", 0.0, 1.0, lo_open=True)
    j = _check_J(J)
    y = np.empty_like(j)
    y[0] = j[0]
    for i in range(1, j.size):
        y[i] = y[i - 1] + ema * (j[i] - y[i - 1])
    return y


def stability_scores(J: ArrayLike, ema: float = 0.01) -> np.ndarray:
    """Stability score per scored point (REPRO_SPEC §3), over the n = t+1 points 0..t::

        y = EMA_β(J_0..J_t)
        τ_K,t = 2/(n(n−1)) · Σ_{0≤i<j≤t} sign(y_j − y_i)      (Kendall's tau-a against time; sign(0) = 0)
        S_stab,t = (τ_K,t + 1) / 2                              ∈ [0, 1]

    ``J``: (T+1,) as in :func:`magnitude_scores`. Returns (T,). One (T+1)² sign matrix serves every
    t: column j holds the pairs that point j adds, so a cumulative sum gives all prefixes.
    """
    y = ema_path(J, ema)  # (T+1,)
    signs = np.triu(np.sign(y[None, :] - y[:, None]), k=1)  # (T+1, T+1): [i, j] = sign(y_j − y_i), i < j
    concordance = np.cumsum(signs.sum(axis=0))[1:]  # (T,): Σ over pairs within 0..t, t = 1..T
    t = np.arange(1, y.size, dtype=np.float64)  # (T,)
    tau = 2.0 * concordance / ((t + 1.0) * t)
    return (tau + 1.0) / 2.0


def process_scores(J: ArrayLike, stability_weight: float = 0.1, ema: float = 0.01,
                   eps: float = 1e-6) -> np.ndarray:
    """Process score per scored point (REPRO_SPEC §3): S_t = (1−w)·S_magn,t + w·S_stab,t. Returns (T,)."""
    _check_range(stability_weight, "stability_weight", 0.0, 1.0)
    w = stability_weight
    return (1.0 - w) * magnitude_scores(J, eps) + w * stability_scores(J, ema)


def process_rewards(J: ArrayLike, stability_weight: float = 0.1, ema: float = 0.01,
                    eps: float = 1e-6) -> np.ndarray:
    """Process reward per scored point (REPRO_SPEC §4)::

        r̃_1 = S_1,   r̃_j = S_j − S_{j−1}   (j ≥ 2, over the scored points only)

    Σ_j r̃_j telescopes to S_T, which is why trainers must keep the rewards per segment
    (return-to-go), never only their sum. r̃_j depends on J_0..J_j only, so an online env can call
    this on the J seen so far and take the last entry. ``J``: (T+1,). Returns (T,).
    """
    scores = process_scores(J, stability_weight, ema, eps)  # (T,)
    return np.diff(scores, prepend=0.0)


def rewards_for(config: RewardConfig, J: ArrayLike) -> np.ndarray:
    """:func:`process_rewards` with w, β, ε from ``config``. Returns (T,)."""
    return process_rewards(J, config.stability_weight, config.ema, config.eps)


# ---------------------------------------------------------------------------------------------
# Which points are scored (§4)


def select_points(entropies: ArrayLike, k: int = 20, *, mode: Selection = "topk_entropy",
                  threshold: float | None = None) -> tuple[int, ...]:
    """Sorted 1-based segment indices to score; the last segment (the end of the reasoning) always is.

    ``entropies``: (T,) entropy of the policy's next-token distribution at each segment's first token.

    - ``"all"``: every segment 1..T.
    - ``"topk_entropy"`` (REPRO_SPEC §4): the ``k`` highest-entropy segments among 1..T−1, plus T:
      min(k, T−1) + 1 points, so the scorer always does k+1 cuts on long responses. Ties go to the
      earlier segment.
    - ``"entropy_threshold"``: segments with entropy >= ``threshold``, plus T.
    """
    h = check_vector(entropies, "entropies", min_len=1, what="a finite entropy")
    T = h.size
    if mode == "all":
        return tuple(range(1, T + 1))
    if mode == "topk_entropy":
        _check_count(k, "k")
        order = np.argsort(-h[:-1], kind="stable")  # stable: equal entropies keep the earlier segment first
        chosen = order[:k] + 1
    elif mode == "entropy_threshold":
        if threshold is None or not _is_number(threshold) or not np.isfinite(threshold):
            raise RewardInputError(f"threshold must be a finite number for mode='entropy_threshold', "
                                   f"got {describe(threshold)}")
        chosen = np.flatnonzero(h[:-1] >= threshold) + 1
    else:
        choices = ", ".join(repr(s) for s in SELECTIONS)
        raise RewardInputError(f"mode must be one of {choices}, got {describe(mode)}")
    return tuple(sorted(int(p) for p in chosen)) + (T,)


def points_for(config: RewardConfig, entropies: ArrayLike) -> tuple[int, ...]:
    """:func:`select_points` with the selection mode, k and threshold of ``config``."""
    return select_points(entropies, config.k, mode=config.selection, threshold=config.entropy_threshold)


def _check_points(points: Sequence[int], T: int, name: str = "points") -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 1 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise RewardInputError(f"{name} must be a 1-D sequence of ints, got {describe(points)}")
    if p.size and (p.min() < 1 or p.max() > T):
        raise RewardInputError(f"{name} must lie in 1..{T} (1-based segment indices), got {list(points)}")
    if np.any(np.diff(p) <= 0):
        raise RewardInputError(f"{name} must be sorted and unique, got {list(points)}")
    return p.astype(np.int64)


def spread_rewards(points: Sequence[int], rewards: ArrayLike, T: int) -> np.ndarray:
    """Per-segment rewards (T,): ``rewards[i]`` at segment ``points[i]`` (1-based), 0 elsewhere.

    An unscored segment has no reward of its own; the next scored one carries the change since the
    previous scored point, because :func:`process_rewards` ran over the scored points only (§4).
    """
    _check_count(T, "T")
    p = _check_points(points, int(T))
    r = check_vector(rewards, "rewards")
    if r.size != p.size:
        raise RewardInputError(f"rewards has {r.size} values but points has {p.size}; "
                               "expected one reward per point")
    out = np.zeros(int(T))
    out[p - 1] = r
    return out


def scored_mask(points: Sequence[int], T: int) -> np.ndarray:
    """(T,) bool: True at the scored segments ``points`` (1-based)."""
    mask = np.zeros(int(T), dtype=bool)
    mask[_check_points(points, int(T)) - 1] = True
    return mask


@dataclass(frozen=True)
class PointRewards:
    """One response's RePro rewards (:func:`reward_points`): the chosen points and, at each, the
    parts of REPRO_SPEC §3–§4."""

    T: int
    """Reasoning segments."""
    points: tuple[int, ...]
    """(M,) the chosen points, 1-based segment indices, sorted."""
    J: np.ndarray
    """(1 + M,) J_0, then J at the points."""
    magnitude: np.ndarray
    """(M,) S_magn."""
    stability: np.ndarray
    """(M,) S_stab."""
    score: np.ndarray
    """(M,) S = (1 − w)·S_magn + w·S_stab."""
    rewards: np.ndarray
    """(M,) r̃ = S_j − S_{j−1} over the points (S_0 = 0)."""

    @property
    def segment_rewards(self) -> np.ndarray:
        """(T,) r̃ at each chosen segment, 0 elsewhere (:func:`spread_rewards`)."""
        return spread_rewards(self.points, self.rewards, self.T)

    @property
    def scored(self) -> np.ndarray:
        """(T,) bool: the chosen segments."""
        return scored_mask(self.points, self.T)

    @property
    def process_return(self) -> float:
        """S at the last point (the sum of r̃); 0 without points."""
        return float(self.rewards.sum())


def reward_points(config: RewardConfig, J: ArrayLike, entropies: ArrayLike | None = None, *,
                  selection: Selection | None = None) -> PointRewards:
    """J at the ends of a response's T reasoning segments → the chosen points → r̃: the one
    composition of REPRO_SPEC §3–§4 that the env, ``score``, the learners and TRL share.

    ``J``: (T+1,) = [J_0, J_1..J_T]; a NaN J_t marks a segment end without a J (the env scored none
    there: a context overflow), never chosen. ``entropies``: (T,) first-token entropies, read by the
    ``topk_entropy`` and ``entropy_threshold`` selections (NaN: never chosen by entropy).
    ``selection`` overrides ``config.selection`` (``score`` reports every point: ``"all"``). The
    points are chosen among the segment ends with a J, and the last of those is always one; then
    magnitude, stability, S and r̃ are computed over the chosen points only (§4), with w, β, ε
    from ``config``. The env calls this on the J seen so far and takes the last entries: r̃_j
    depends on J_0..J_j only.
    """
    j = np.asarray(J, dtype=np.float64)
    if j.ndim != 1 or j.size < 1:
        raise RewardInputError(f"J must be a 1-D array [J_0, J_1..J_T], got {describe(J)}")
    T = j.size - 1
    candidates = np.flatnonzero(np.isfinite(j[1:])) + 1  # (V,) 1-based
    mode = selection or config.selection
    if candidates.size == 0:
        points: tuple[int, ...] = ()
    elif mode == "all":
        points = tuple(int(t) for t in candidates)
    else:
        if entropies is None:
            raise RewardInputError(f"selection {mode!r} needs the segments' entropies, got None")
        h = np.asarray(entropies, dtype=np.float64)
        h = np.where(np.isfinite(h), h, -1.0)  # no entropy: below every real one, never among the top k
        if h.ndim != 1 or h.size != T:
            raise RewardInputError(f"entropies must hold {T} values (one per segment, as J has), got shape {h.shape}")
        chosen = select_points(h[candidates - 1], config.k, mode=mode, threshold=config.entropy_threshold)
        points = tuple(int(candidates[c - 1]) for c in chosen)
    Jp = j[[0, *points]]  # (1 + M,)
    if not points:
        check_vector(Jp, "J", min_len=1, what="a finite mean log-prob (<= 0)")
        empty = np.zeros(0)
        return PointRewards(T, (), Jp, empty, empty, empty, empty)
    w = config.stability_weight
    magnitude = magnitude_scores(Jp, config.eps)
    stability = stability_scores(Jp, config.ema)
    score = (1.0 - w) * magnitude + w * stability
    return PointRewards(T, points, Jp, magnitude, stability, score, np.diff(score, prepend=0.0))


# ---------------------------------------------------------------------------------------------
# GRPO (§5): lists of variable-length trajectories


def group_stats(x: np.ndarray) -> tuple[float, float]:
    """(mean, sample std with ddof = 1) of a group or pool (REPRO_SPEC §5, as verl and TRL compute
    them); a group of one normalises with mean 0 and std 1, as verl does."""
    if x.size <= 1:
        return 0.0, 1.0
    return float(x.mean()), float(x.std(ddof=1))


def grpo_outcome_advantages(R: ArrayLike) -> np.ndarray:
    """Group-normalised outcome advantage (REPRO_SPEC §5)::

        A_i = (R_i − mean_g R) / (std_g R + 1e-6)      std: sample (ddof = 1); G = 1: mean 0, std 1

    ``R``: (G,) outcome rewards of the G rollouts of one prompt. Returns (G,).
    """
    r = check_vector(R, "R", min_len=1)
    mean, std = group_stats(r)
    return (r - mean) / (std + ADV_EPS)


def _group_segments(segment_rewards: Sequence[ArrayLike], scored_masks: Sequence[ArrayLike] | None
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rewards = [check_vector(r, f"segment_rewards[{i}]") for i, r in enumerate(segment_rewards)]
    if scored_masks is None:
        return rewards, [np.ones(r.size, dtype=bool) for r in rewards]
    if len(scored_masks) != len(rewards):
        raise RewardInputError(f"scored_masks has {len(scored_masks)} rollouts but segment_rewards has "
                               f"{len(rewards)}; expected one mask per rollout")
    masks = []
    for i, (r, m) in enumerate(zip(rewards, scored_masks, strict=True)):
        m = np.asarray(m, dtype=bool)
        if m.shape != r.shape:
            raise RewardInputError(f"scored_masks[{i}] has shape {m.shape} but segment_rewards[{i}] has "
                                   f"{r.shape}; expected one flag per segment")
        masks.append(m)
    return rewards, masks


def grpo_process_advantages(segment_rewards: Sequence[ArrayLike],
                            scored_masks: Sequence[ArrayLike] | None = None) -> list[np.ndarray]:
    """Segment-level process advantage of each rollout in a group (REPRO_SPEC §5)::

        r̃'_j = (r̃_j − μ_g) / (σ_g + 1e-6)     μ_g, σ_g (ddof = 1) pooled over the group's scored segments
        Ã_j  = Σ_{j' ≥ j} r̃'_{j'}              return-to-go, γ = 1

    ``segment_rewards[i]``: (T_i,) per-segment rewards of rollout i (:func:`spread_rewards`);
    ``scored_masks[i]``: (T_i,) bool, True where a segment was scored (``None``: all scored).
    Unscored segments add 0 and stay out of the pool. Returns a list of (T_i,) arrays.
    """
    rewards, masks = _group_segments(segment_rewards, scored_masks)
    pool = np.concatenate([r[m] for r, m in zip(rewards, masks, strict=True)] + [np.zeros(0)])  # (N_scored,)
    mu, sigma = group_stats(pool)
    out = []
    for r, m in zip(rewards, masks, strict=True):
        normalised = np.where(m, (r - mu) / (sigma + ADV_EPS), 0.0)  # (T_i,)
        out.append(np.cumsum(normalised[::-1])[::-1])
    return out


class GRPOAdvantages(NamedTuple):
    """Outcome advantages (G,) and combined segment advantages, one (T_i,) array per rollout."""

    outcome: np.ndarray
    segments: list[np.ndarray]


def grpo_advantages(R: ArrayLike, segment_rewards: Sequence[ArrayLike],
                    scored_masks: Sequence[ArrayLike] | None = None, alpha: float = 0.1) -> GRPOAdvantages:
    """RePro-GRPO advantages of a group (REPRO_SPEC §5): Â_{i,j} = A_i + α·Ã_{i,j}.

    ``R``: (G,); ``segment_rewards``, ``scored_masks``: as in :func:`grpo_process_advantages`.
    Returns ``(outcome=A (G,), segments=[Â_i (T_i,)])``; feed each to :func:`token_advantages`.
    ``alpha = 0`` is plain GRPO.
    """
    A = grpo_outcome_advantages(R)  # (G,)
    if len(segment_rewards) != A.size:
        raise RewardInputError(f"segment_rewards has {len(segment_rewards)} rollouts but R has {A.size}; "
                               "expected one per rollout")
    if not (_is_number(alpha) and 0.0 <= alpha < np.inf):
        raise RewardInputError(f"alpha must be a number >= 0, got {describe(alpha)}")
    process = grpo_process_advantages(segment_rewards, scored_masks)
    return GRPOAdvantages(A, [a + alpha * p for a, p in zip(A, process, strict=True)])


def token_advantages(segment_advantage: ArrayLike, segment_token_counts: Sequence[int],
                     trailing_tokens: int = 0, *, outcome_advantage: float) -> np.ndarray:
    """Broadcast one rollout's segment advantages to its response tokens (REPRO_SPEC §5).

    Every token of segment j gets ``segment_advantage[j]`` (Â_j = A + α·Ã_j); the
    ``trailing_tokens`` after the reasoning (answer tail, EOS) get ``outcome_advantage`` A only,
    since Ã = 0 there. ``segment_advantage``: (T,); ``segment_token_counts``: (T,) ints.
    Returns (Σ counts + trailing_tokens,).
    """
    adv = check_vector(segment_advantage, "segment_advantage")
    counts = np.asarray(segment_token_counts)
    if counts.shape != adv.shape or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
        raise RewardInputError(f"segment_token_counts must be {adv.size} ints (one per segment), "
                               f"got {describe(segment_token_counts)}")
    if np.any(counts < 0):
        raise RewardInputError(f"segment_token_counts must be >= 0, got {list(segment_token_counts)}")
    _check_count(trailing_tokens, "trailing_tokens")
    try:
        outcome = float(outcome_advantage)
    except (TypeError, ValueError):
        outcome = float("nan")
    if not np.isfinite(outcome):
        raise RewardInputError(f"outcome_advantage must be a finite number, "
                               f"got {describe(outcome_advantage)}")
    tail = np.full(int(trailing_tokens), outcome)
    return np.concatenate([np.repeat(adv, counts.astype(np.int64)), tail])  # (L,)


def grpo_token_advantages(R: ArrayLike, segment_rewards: Sequence[ArrayLike],
                          scored_masks: Sequence[ArrayLike] | None,
                          segment_token_counts: Sequence[Sequence[int]], trailing_tokens: Sequence[int],
                          alpha: float = 0.1) -> list[np.ndarray]:
    """Per-token RePro-GRPO advantages of a group: :func:`grpo_advantages` then :func:`token_advantages`.

    ``segment_token_counts[i]``: (T_i,) tokens per segment of rollout i; ``trailing_tokens[i]``:
    response tokens after its reasoning. Returns a list of (L_i,) arrays.
    """
    A, segments = grpo_advantages(R, segment_rewards, scored_masks, alpha)
    if len(segment_token_counts) != A.size or len(trailing_tokens) != A.size:
        raise RewardInputError(f"segment_token_counts and trailing_tokens must have {A.size} entries (one "
                               f"per rollout), got {len(segment_token_counts)} and {len(trailing_tokens)}")
    return [token_advantages(seg, counts, tail, outcome_advantage=float(a))
            for a, seg, counts, tail in zip(A, segments, segment_token_counts, trailing_tokens, strict=True)]


# ---------------------------------------------------------------------------------------------
# PPO (§5): padded (B, L) batches with a mask


def gae(rewards: ArrayLike, values: ArrayLike, gamma: float = 1.0, lam: float = 1.0,
        last_value: float = 0.0, mask: ArrayLike | None = None) -> np.ndarray:
    """Generalised advantage estimation, as the recurrence (REPRO_SPEC §5, CleanRL style)::

        δ_t = r_t + γ·V_{t+1} − V_t          V_{L} = last_value (0: the episode ended)
        A_t = δ_t + γ·λ·A_{t+1}              A_{L} = 0

    ``rewards``, ``values``: (L,) or (B, L). ``mask``: same shape, True on real tokens, each row a
    prefix (right padding); the step after a row's last real token is terminal and bootstraps with
    ``last_value`` (scalar or (B,)). Returns advantages of the input shape (0 on padding); the
    value targets are ``advantages + values``. γ = λ = 1 gives return-to-go − V.
    """
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if r.shape != v.shape or r.ndim not in (1, 2):
        raise RewardInputError(f"rewards and values must share a shape (L,) or (B, L), "
                               f"got {r.shape} and {v.shape}")
    for name, x in (("rewards", r), ("values", v)):
        if not np.all(np.isfinite(x)):
            i = tuple(int(a) for a in np.argwhere(~np.isfinite(x))[0])
            raise RewardInputError(f"{name}[{', '.join(map(str, i))}] must be finite, got {float(x[i])!r}")
    _check_range(gamma, "gamma", 0.0, 1.0)
    _check_range(lam, "lam", 0.0, 1.0)
    squeeze = r.ndim == 1
    r2, v2 = np.atleast_2d(r), np.atleast_2d(v)  # (B, L)
    m = np.ones(r2.shape, dtype=bool) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool))
    if m.shape != r2.shape:
        raise RewardInputError(f"mask must have the shape of rewards {r.shape}, got {np.shape(mask)}")
    B, L = r2.shape
    boot = np.broadcast_to(np.asarray(last_value, dtype=np.float64), (B,))  # (B,)
    advantages = np.zeros((B, L))
    next_adv = np.zeros(B)  # (B,)
    next_value = boot.copy()  # (B,)
    for t in reversed(range(L)):
        delta = r2[:, t] + gamma * next_value - v2[:, t]  # (B,)
        adv = delta + gamma * lam * next_adv
        # padding: keep the terminal bootstrap for the row's last real token
        next_adv = np.where(m[:, t], adv, 0.0)
        next_value = np.where(m[:, t], v2[:, t], boot)
        advantages[:, t] = next_adv
    return advantages[0] if squeeze else advantages


def whiten(x: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """(x − mean) / (std + 1e-8) over the masked entries, 0 at masked-out entries.

    std is the sample std (ddof = 1), as REPRO_SPEC §5 says of every std there and as verl's and
    TRL's ``masked_whiten`` compute it (unbiased variance); a single entry whitens to 0.
    """
    a = np.asarray(x, dtype=np.float64)
    m = np.ones(a.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != a.shape:
        raise RewardInputError(f"mask must have the shape of x {a.shape}, got {m.shape}")
    if not m.any():
        return np.zeros_like(a)
    vals = a[m]
    std = vals.std(ddof=1) if vals.size > 1 else 0.0
    return np.where(m, (a - vals.mean()) / (std + WHITEN_EPS), 0.0)


def _numpy(x: Any) -> np.ndarray:
    """torch tensors (any device) or array-likes as numpy; advantages carry no gradient."""
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def ppo_advantages(outcome_rewards_tok: ArrayLike, process_rewards_tok: ArrayLike, values: ArrayLike,
                   alpha: float = 0.1, gamma: float = 1.0, lam: float = 1.0, *, process_mask: ArrayLike,
                   mask: ArrayLike | None = None) -> tuple[Any, Any]:
    """RePro-PPO advantages and critic targets for a padded batch (REPRO_SPEC §5)::

        r̃'   = (r̃ − μ) / (σ + 1e-6)          μ, σ over the batch's scored positions (``process_mask``)
        A     = GAE_{γ,λ}(outcome rewards, V)
        Ã     = GAE_{γ,λ}(r̃', V)              the same V
        Â     = whiten(A) + α · whiten(Ã)
        returns = A + V                        the critic regresses on the outcome value only

    All arrays are (B, L) (or (L,)) token-aligned, right-padded, numpy or torch:
    ``outcome_rewards_tok`` holds R at each row's last token (0 elsewhere); ``process_rewards_tok`` holds r̃
    at each scored segment's last token; ``process_mask`` is True at those positions; ``mask`` is True
    on real tokens (``None``: all real). Returns ``(advantages, returns)``, 0 on padding, as torch
    tensors on ``values``' device and dtype when ``values`` is a tensor, else float64 numpy.
    """
    if not (_is_number(alpha) and 0.0 <= alpha < np.inf):
        raise RewardInputError(f"alpha must be a number >= 0, got {describe(alpha)}")
    v = _numpy(values).astype(np.float64)
    m = np.ones(v.shape, dtype=bool) if mask is None else _numpy(mask).astype(bool)
    pm = _numpy(process_mask).astype(bool)
    pr = _numpy(process_rewards_tok).astype(np.float64)
    if pm.shape != v.shape or pr.shape != v.shape:
        raise RewardInputError(f"process_rewards_tok and process_mask must have the shape of values "
                               f"{v.shape}, got {pr.shape} and {pm.shape}")
    pm = pm & m
    pool = pr[pm]  # (N_scored,)
    if pool.size and not np.all(np.isfinite(pool)):
        raise RewardInputError("process_rewards_tok must be finite at scored positions, got "
                               f"{float(pool[~np.isfinite(pool)][0])!r}")
    normalised = np.zeros(v.shape)  # (B, L)
    if pool.size:
        mean, std = group_stats(pool)
        normalised[pm] = (pool - mean) / (std + ADV_EPS)
    outcome_adv = gae(_numpy(outcome_rewards_tok), v, gamma, lam, mask=m)  # (B, L)
    process_adv = gae(normalised, v, gamma, lam, mask=m)  # (B, L)
    advantages = whiten(outcome_adv, m) + alpha * whiten(process_adv, m)
    returns = np.where(m, outcome_adv + v, 0.0)
    if hasattr(values, "detach"):
        import torch

        return (torch.as_tensor(advantages, dtype=values.dtype, device=values.device),
                torch.as_tensor(returns, dtype=values.dtype, device=values.device))
    return advantages, returns
