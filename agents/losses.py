"""Losses of the learners: PPO-clip token-mean surrogate, k3 KL to a reference, value loss.

All functions take per-position tensors aligned with next-token log-probs, ``(B, L−1)``, and a
boolean ``mask`` of the generated positions; ``num_tokens`` is the token count the mean divides by
(the whole minibatch's, so that gradient accumulation over micro-batches sums to the token mean).
"""

from __future__ import annotations

import math

import torch

from repro_env.errors import TrainingError

__all__ = ["TrainingError", "check_finite", "clipped_policy_loss", "kl_k3", "value_loss"]


def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, num_tokens: int, clip_low: float = 0.2, clip_high: float = 0.28
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate, token mean over the generated tokens (REPRO_SPEC §5)::

        ρ_k   = exp(log π(y_k) − log π_old(y_k))
        ℓ_k   = −min(ρ_k · Â_k, clip(ρ_k, 1 − ε_low, 1 + ε_high) · Â_k)
        loss  = Σ_k mask_k · ℓ_k / num_tokens

    Returns the loss and statistics (``clip_frac``: share of masked tokens where the clipped term
    was taken, ``approx_kl``: mean of old − new log-prob).
    """
    ratio = torch.exp(log_probs - old_log_probs)  # (B, L−1)
    unclipped = ratio * advantages  # (B, L−1)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages  # (B, L−1)
    per_token = -torch.minimum(unclipped, clipped)  # (B, L−1)
    m = mask.to(per_token.dtype)
    loss = (per_token * m).sum() / num_tokens
    with torch.no_grad():
        count = max(1.0, float(m.sum()))
        stats = {
            "clip_frac": float(((clipped < unclipped).to(m.dtype) * m).sum()) / count,
            "approx_kl": float(((old_log_probs - log_probs) * m).sum()) / count,
        }
    return loss, stats


def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π ‖ π_ref) (Schulman): exp(r) − r − 1 with r = log π_ref − log π.

    Non-negative, unbiased for samples from π, low variance. (B, L−1) → (B, L−1).
    """
    r = ref_log_probs - log_probs  # (B, L−1)
    return torch.exp(r) - r - 1.0


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               num_tokens: int) -> torch.Tensor:
    """½ · Σ_k mask_k · (V_k − G_k)² / num_tokens: the critic regresses on the returns."""
    return 0.5 * (((values - returns) ** 2) * mask.to(values.dtype)).sum() / num_tokens


def check_finite(value: torch.Tensor | float, what: str, update: int) -> None:
    """Raise :class:`TrainingError` naming ``what`` and the update when ``value`` is NaN or infinite."""
    number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(number):
        raise TrainingError(
            f"{what} is {number} at update {update}: training stopped before the optimiser step, so "
            "the model keeps the last good weights; lower lr, raise max_grad_norm's strictness or "
            "use dtype float32, and resume from the last checkpoint"
        )
