"""RePro advantages for trainers (REPRO_SPEC §5): the segment rewards r̃ of :mod:`repro_env.reward`
and the outcome R of a group or batch → per-segment and per-token advantages.

``grpo_advantages`` / ``token_advantages`` for GRPO (lists of variable-length trajectories, one
group per prompt), ``ppo_advantages`` for PPO (padded ``(B, L)`` arrays with a mask; numpy or
torch). Inputs are validated as in :mod:`repro_env.reward`: a bad value is a
:class:`RewardInputError` naming the argument and the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from repro_env.config import describe
from repro_env.errors import RewardInputError
from repro_env.reward import check_count, check_range, check_vector, is_number

ADV_EPS = 1e-6
"""The 1e-6 in the GRPO normalisations ``(x − mean) / (std + 1e-6)`` (REPRO_SPEC §5)."""
WHITEN_EPS = 1e-8


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
    if not (is_number(alpha) and 0.0 <= alpha < np.inf):
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
    check_count(trailing_tokens, "trailing_tokens")
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
    check_range(gamma, "gamma", 0.0, 1.0)
    check_range(lam, "lam", 0.0, 1.0)
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
    if not (is_number(alpha) and 0.0 <= alpha < np.inf):
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
