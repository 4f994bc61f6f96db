"""RePro reward math as pure functions: J → scores → segment rewards (REPRO_SPEC §2–§4).

The flow for one response with reasoning segments ``s_1..s_T``, in one call::

    parts = reward_points(config, J, entropies)      # J: [J_0, J_1..J_T] (§2)
    parts.points                                     # which segment ends are scored (§4: points_for)
    parts.rewards                                    # r̃, one per point (§4: process_rewards over the points)
    parts.segment_rewards, parts.scored              # (T,): r̃ spread over the segments, and the mask

The trainer-side advantages of a group or batch of responses (§5) are in :mod:`repro_env.advantages`.

Every J-consuming function validates its input and raises :class:`RewardInputError` naming the
argument, the index and the value: a NaN never leaks into a reward. ``J`` is a mean log-prob, so
``J ≤ 0``; values in ``(0, J_POSITIVE_TOLERANCE]`` are float error of a log-softmax and are read as
0, larger positive values are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from repro_env.config import check, describe
from repro_env.errors import RewardInputError

Selection = Literal["all", "topk_entropy", "entropy_threshold"]
SELECTIONS: tuple[str, ...] = ("all", "topk_entropy", "entropy_threshold")

J_POSITIVE_TOLERANCE = 1e-3
"""Largest positive J accepted (read as 0): fp32 log-softmax error; bf16 scorers must upcast first."""


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
        check(is_number(self.alpha) and 0.0 <= self.alpha < np.inf, "alpha", self.alpha, "a number >= 0")
        check(is_number(self.stability_weight) and 0.0 <= self.stability_weight <= 1.0, "stability_weight",
              self.stability_weight, "a number in [0, 1]")
        check(is_number(self.ema) and 0.0 < self.ema <= 1.0, "ema", self.ema, "a number in (0, 1]")
        check(self.selection in SELECTIONS, "selection", self.selection,
              f"one of {', '.join(repr(s) for s in SELECTIONS)}")
        check(isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 0, "k", self.k,
              "an int >= 0")
        check(is_number(self.entropy_threshold) and np.isfinite(self.entropy_threshold), "entropy_threshold",
              self.entropy_threshold, "a finite number")
        check(is_number(self.eps) and 0.0 < self.eps < np.inf, "eps", self.eps, "a number > 0")


def is_number(x: Any) -> bool:
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


def check_count(value: Any, name: str) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise RewardInputError(f"{name} must be an int >= 0, got {describe(value)}")


def check_range(value: float, name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = is_number(value) and (lo < value if lo_open else lo <= value) and value <= hi
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
    if not (is_number(eps) and 0.0 < eps < np.inf):
        raise RewardInputError(f"eps must be a number > 0, got {describe(eps)}")
    j = _check_J(J)
    delta = (j[1:] - j[0]) / max(abs(j[0]), eps)  # (T,)
    return np.tanh(delta - 1.0) + 1.0


def ema_path(J: ArrayLike, ema: float = 0.01) -> np.ndarray:
    """EMA of J (REPRO_SPEC §3): y_0 = J_0, y_i = β·J_i + (1−β)·y_{i−1}. Returns (T+1,).

    Computed as y_i = y_{i−1} + β·(J_i − y_{i−1}) (the same number): a constant J then gives an
    exactly constant y, so Kendall's tau sees true ties instead of rounding noise.
    """
    check_range(ema, "ema", 0.0, 1.0, lo_open=True)
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
    check_range(stability_weight, "stability_weight", 0.0, 1.0)
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
        check_count(k, "k")
        order = np.argsort(-h[:-1], kind="stable")  # stable: equal entropies keep the earlier segment first
        chosen = order[:k] + 1
    elif mode == "entropy_threshold":
        if threshold is None or not is_number(threshold) or not np.isfinite(threshold):
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
    check_count(T, "T")
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
