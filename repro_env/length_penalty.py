"""Kimi k1.5's group-relative length reward: a baseline to compare RePro against, not part of RePro.

Kimi Team, "Kimi k1.5: Scaling Reinforcement Learning with LLMs", arXiv 2501.12599, §2.3.3 "Length
Penalty". Within a group (the responses sampled for one problem)::

    λ_i = 0.5 − (len_i − min_len) / (max_len − min_len)        min, max over the group
    len_reward_i = λ_i              if response i is correct
                   min(0, λ_i)      otherwise

The shortest correct response earns +0.5 and the longest response −0.5; a wrong response is
penalised for being long but never paid for being short. A trainer adds ``weight · len_reward`` to
the outcome reward R *before* the group normalisation, ``A = (R' − mean_g R') / (std_g R' + ε)``
with ``R' = R + weight · len_reward``. (The paper also warms the weight up during training; here it
is constant.)

Equal lengths: when ``max_len = min_len`` (every response of the group has the same length, or the
group has one response) the formula is 0/0. There is then no length signal, so every λ is 0 and R
is unchanged. Taking the limit value 0.5 instead would pay every correct response of the group the
same bonus: no information about length, only a wider gap between correct and wrong responses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from repro_env.config import describe
from repro_env.errors import RewardInputError
from repro_env.reward import check_vector


def length_rewards(lengths: ArrayLike, correct: Sequence[bool], groups: ArrayLike | None = None) -> np.ndarray:
    """Kimi k1.5's length reward of every response, min and max taken within its group (module docstring).

    ``lengths``: (N,) response lengths (generated tokens), numbers >= 0; ``correct``: (N,) bools,
    whether each response's final answer verified; ``groups``: (N,) group id of each response
    (``None``: all N form one group). Returns (N,) values in [−0.5, 0.5], 0 in a group of equal lengths.
    """
    length = _lengths(lengths)
    right = _flags(correct, length.size)
    group = np.zeros(length.size, dtype=np.int64) if groups is None else np.asarray(groups)
    if group.shape != length.shape:
        raise RewardInputError(f"groups must have one id per response ({length.size}), got {describe(groups)}")
    lam = np.zeros(length.size)  # (N,)
    for g in np.unique(group):
        members = group == g
        low, high = length[members].min(), length[members].max()
        if high > low:  # equal lengths carry no length signal: λ stays 0
            lam[members] = 0.5 - (length[members] - low) / (high - low)
    return np.where(right, lam, np.minimum(0.0, lam))


def _lengths(lengths: ArrayLike) -> np.ndarray:
    arr = check_vector(lengths, "lengths", what="a finite number >= 0 (tokens)")
    bad = np.flatnonzero(arr < 0)
    if bad.size:
        i = int(bad[0])
        raise RewardInputError(f"lengths[{i}] must be a finite number >= 0 (tokens), got {float(arr[i])!r}")
    return arr


def _flags(correct: Sequence[bool], n: int) -> np.ndarray:
    flags = np.asarray(correct)
    if flags.shape != (n,):
        raise RewardInputError(f"correct must have one flag per response ({n}), got {describe(correct)}")
    if flags.size and flags.dtype != np.bool_:
        raise RewardInputError(f"correct must hold bools (whether each answer verified), got {describe(correct)}")
    return flags.astype(bool)
