"""95% bootstrap intervals over problems and seeds, and paired differences (``repro-env compare``).

The data of one method, one decoding mode (greedy or sampled) and one metric are two (S, P) arrays
over its seeds s and the held-out problems p::

    sums[s, p]    Σ of the metric over problem p's episodes of seed s where it applies
    counts[s, p]  how many of them it applies to (``episode_metrics`` gives ``None`` elsewhere)
    θ             = Σ_{s,p} sums / Σ_{s,p} counts        the mean over applicable episodes

A draw b resamples the seeds and the problems with replacement, as multiplicities ``w_s[b]`` (S,)
and ``w_p[b]`` (P,). The problem draws are the same for every method and both modes. The seed draws
are the same for every method that has the same seeds. ::

    θ*_b  = Σ_{s,p} w_s[b,s]·w_p[b,p]·sums[s,p] / Σ_{s,p} w_s[b,s]·w_p[b,p]·counts[s,p]
    CI    = the 2.5th and 97.5th percentiles of θ*_1..B   (percentile bootstrap; draws where the
                                                          metric applies to no episode are dropped)

A method m is paired with its baseline a on m's seeds (a must have run them) with the same draws::

    Δ*_b  = θ*_m,b − θ*_a,b                        difference, CI from the percentiles of Δ*
    ρ*_b  = 100·(θ*_m,b / θ*_a,b − 1)              relative difference in %; None if some θ*_a,b = 0

Where a method removes tokens (Δ of tokens per response < 0), the share of the removed tokens that
were overthinking segments is a ratio of two paired differences on the same draws::

    share*_b = Δ*_b(overthinking tokens) / Δ*_b(tokens per response)

Draws are seeded (``seed``), so the tables are reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LEVEL = 0.95


def multiplicities(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """How often each of ``n`` items is picked in each of ``draws`` resamples of size n."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)  # (draws, n)


def cells(runs: Sequence[Sequence[Mapping[str, Any]]], metric: str, mode: str,
          num_problems: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts), each (S, P), from each seed's episode rows ``{"mode", "problem", metric, ...}``."""
    sums = np.zeros((len(runs), num_problems))  # (S, P)
    counts = np.zeros((len(runs), num_problems))  # (S, P)
    for s, rows in enumerate(runs):
        for row in rows:
            value = row.get(metric)
            if row["mode"] == mode and value is not None:
                sums[s, row["problem"]] += value
                counts[s, row["problem"]] += 1
    return sums, counts


def interval(draws: np.ndarray) -> list[float] | None:
    """[lo, hi]: the central ``LEVEL`` percentiles of the finite draws (None if there are none)."""
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return None
    tail = 100 * (1 - LEVEL) / 2
    return [float(x) for x in np.percentile(finite, [tail, 100 - tail])]


class Bootstrap:
    """``draws`` seeded resamples of ``num_problems`` problems and of each set of seeds."""

    def __init__(self, num_problems: int, *, draws: int = 2000, seed: int = 0) -> None:
        self.draws, self.seed = draws, seed
        self.problem_weights = multiplicities(np.random.default_rng([seed, 0]), num_problems, draws)  # (B, P)
        self._seed_weights: dict[tuple[int, ...], np.ndarray] = {}

    def seed_weights(self, seeds: Sequence[int]) -> np.ndarray:
        """(B, S) multiplicities of ``seeds``: a pure function of (seed, the seed list)."""
        key = tuple(int(s) for s in seeds)
        if key not in self._seed_weights:
            rng = np.random.default_rng([self.seed, 1, len(key), *key])
            self._seed_weights[key] = multiplicities(rng, len(key), self.draws)
        return self._seed_weights[key]

    def estimate(self, sums: np.ndarray, counts: np.ndarray, seeds: Sequence[int]) -> tuple[float, np.ndarray]:
        """(θ, θ* of every draw); NaN where no episode applies."""
        ws, wp = self.seed_weights(seeds), self.problem_weights  # (B, S), (B, P)
        total = counts.sum()
        point = float(sums.sum() / total) if total > 0 else float("nan")
        numerator = np.einsum("bs,sp,bp->b", ws, sums, wp)  # (B,)
        denominator = np.einsum("bs,sp,bp->b", ws, counts, wp)  # (B,)
        with np.errstate(invalid="ignore", divide="ignore"):
            return point, numerator / denominator

    def summary(self, sums: np.ndarray, counts: np.ndarray, seeds: Sequence[int]) -> dict[str, Any]:
        """``{"mean", "ci": [lo, hi] or None, "episodes"}`` of one method's metric."""
        point, draws = self.estimate(sums, counts, seeds)
        return {"mean": _number(point), "ci": interval(draws), "episodes": int(counts.sum())}

    def paired(self, method: tuple[np.ndarray, np.ndarray], baseline: tuple[np.ndarray, np.ndarray],
               seeds: Sequence[int]) -> dict[str, Any]:
        """Δ and ρ (in %) of ``method`` − ``baseline``, each (sums, counts) over the same ``seeds``."""
        m, m_draws = self.estimate(*method, seeds)
        a, a_draws = self.estimate(*baseline, seeds)
        out: dict[str, Any] = {"difference": _number(m - a), "ci": interval(m_draws - a_draws),
                               "relative_percent": None, "relative_ci": None}
        finite_base = a_draws[np.isfinite(a_draws)]
        if a != 0 and np.isfinite(a) and not np.any(finite_base == 0):
            with np.errstate(invalid="ignore", divide="ignore"):
                out["relative_percent"] = _number(100 * (m / a - 1))
                out["relative_ci"] = interval(100 * (m_draws / a_draws - 1))
        return out

    def removed_share(self, part: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                      whole: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                      seeds: Sequence[int]) -> dict[str, Any]:
        """``{"share", "ci"}``: Δ(part) / Δ(whole) of (method, baseline) pairs of (sums, counts);
        None when the method does not lower ``whole`` (nothing was removed)."""
        (pm, pm_draws), (pa, pa_draws) = (self.estimate(*c, seeds) for c in part)
        (wm, wm_draws), (wa, wa_draws) = (self.estimate(*c, seeds) for c in whole)
        if not wm - wa < 0:
            return {"share": None, "ci": None}
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"share": _number((pm - pa) / (wm - wa)),
                    "ci": interval((pm_draws - pa_draws) / (wm_draws - wa_draws))}


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
