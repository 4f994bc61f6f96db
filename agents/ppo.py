"""PPO with the RePro process reward (REPRO_SPEC §5); ``process_reward: false`` is plain PPO.

The critic is a linear value head on the policy model's last hidden state: V_k is the value of the
state before generated token k. Rewards sit on generated tokens: the outcome R on the episode's
last one, r̃ on the last token of each scored segment. Then, with :func:`repro_env.reward.
ppo_advantages`::

    r̃'  = (r̃ − μ) / (σ + 1e-6)                 over the batch's scored segments
    A    = GAE_{γ,λ}(outcome rewards, V),   Ã = GAE_{γ,λ}(r̃', V)      one critic for both
    Â    = whiten(A) + α·whiten(Ã),           returns = A + V
    loss = PPO-clip token mean + vf_coef · ½(V − returns)² (+ kl_coef · k3 KL)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repro_env import advantages as adv
from repro_env.agents.episodes import Episode, TokenBatch, pack, summarize
from repro_env.agents.learner import LearnerConfig, LMLearner
from repro_env.agents.losses import clipped_policy_loss, kl_k3, value_loss
from repro_env.config import check


@dataclass(frozen=True)
class PPOConfig(LearnerConfig):
    """PPO: every :class:`LearnerConfig` field plus the critic's."""

    episodes_per_update: int = 16
    """Rollouts per update (one per sub-env, each on a random train problem)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    value_lr: float | None = None
    """Learning rate of the value head; ``None`` uses ``lr``."""
    gamma: float = 1.0
    """γ of GAE (per token)."""
    lam: float = 1.0
    """λ of GAE."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.episodes_per_update, int) and self.episodes_per_update >= 1,
              "episodes_per_update", self.episodes_per_update, "an int >= 1")
        check(isinstance(self.vf_coef, int | float) and self.vf_coef >= 0, "vf_coef", self.vf_coef,
              "a number >= 0")
        check(self.value_lr is None or (isinstance(self.value_lr, int | float) and self.value_lr > 0),
              "value_lr", self.value_lr, "a number > 0 or null (lr)")
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            check(isinstance(value, int | float) and 0 <= value <= 1, name, value, "a number in [0, 1]")

    @property
    def rollouts_per_update(self) -> int:
        """Episodes per collect, the budget ``repro-env compare`` holds equal across learners."""
        return self.episodes_per_update


def token_rewards(episodes: Sequence[Episode]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token-aligned rewards of the episodes' generated tokens, right-padded to (B, N).

    Returns ``(outcome, process, process_mask, mask)``: R on each episode's last generated token,
    r̃ on the last generated token of each scored segment (``process_mask`` True there), and the
    real-token mask. A segment without tokens (context full) puts its r̃ on the token before.
    """
    B = len(episodes)
    N = max(1, max(e.response_tokens for e in episodes))
    outcome, process = np.zeros((B, N)), np.zeros((B, N))
    process_mask, mask = np.zeros((B, N), dtype=bool), np.zeros((B, N), dtype=bool)
    for b, episode in enumerate(episodes):
        n = episode.response_tokens
        mask[b, :n] = True
        if n == 0:
            continue
        ends = np.maximum(np.cumsum(episode.segment_token_counts()) - 1, 0)  # (T,)
        outcome[b, n - 1] = episode.outcome
        for j, (end, scored) in enumerate(zip(ends, episode.scored, strict=True)):
            if scored:
                process[b, end] += episode.process_rewards[j]
                process_mask[b, end] = True
    return outcome, process, process_mask, mask


class PPO(LMLearner):
    """RePro-PPO learner (module docstring); implements :class:`repro_env.agents.base.Learner`."""

    config_class = PPOConfig
    label = "PPO"

    def __init__(self, config: PPOConfig | None = None, task: Any = "RePro-Math-v0", *,
                 seed: int = 0) -> None:
        config = config or PPOConfig()
        super().__init__(config, task, seed=seed, num_envs=config.rollouts_per_update)
        hidden = self.policy.model.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1).to(self.policy.device)
        with torch.no_grad():  # zero init: V = 0 at the start, and no global RNG draw
            self.value_head.weight.zero_()
            self.value_head.bias.zero_()
        value_lr = config.value_lr or config.lr
        self.make_optimizer([{"params": list(self.policy.model.parameters())},
                             {"params": list(self.value_head.parameters()), "lr": value_lr}])
        self._old_values: torch.Tensor | None = None

    def collect(self) -> list[Episode]:
        """One rollout per sub-env, each on a random train problem."""
        problems = self.rng.integers(self.train_size, size=self.config.episodes_per_update).tolist()
        return self.rollouts(problems)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """V at each position that predicts a next token. (B, L, H) → (B, L−1)"""
        return self.value_head(hidden[:, :-1].float())[..., 0]

    def on_old_forward(self, rows: list[int], micro: TokenBatch, hidden: torch.Tensor) -> None:
        L1 = micro.response_mask.shape[1]
        self._old_values[rows, :L1] = self.values(hidden).cpu()

    def update(self, batch: list[Episode]) -> dict[str, float]:
        """GAE advantages from the old values, then clipped-surrogate + value steps; returns metrics."""
        t0 = time.perf_counter()
        tokens = pack(batch, self.pad_id, device=self.policy.device)
        self._old_values = torch.zeros(tokens.response_mask.shape)  # (B, L−1)
        self.add_reference_log_probs(tokens)
        mask = tokens.response_mask  # (B, L−1)
        outcome, process, process_mask, real = token_rewards(batch)  # (B, N) each
        compact = np.zeros(real.shape)  # (B, N) old values of the generated tokens, in order
        compact[real] = self._old_values[mask.cpu()].double().numpy()
        cfg = self.config
        advantages, returns = adv.ppo_advantages(outcome, process, compact, self.alpha, cfg.gamma,
                                                cfg.lam, process_mask=process_mask, mask=real)
        for name, values in (("advantages", advantages), ("returns", returns)):
            full = torch.zeros(mask.shape)  # (B, L−1)
            full[mask.cpu()] = torch.as_tensor(values[real], dtype=torch.float32)
            tokens.values[name] = full.to(self.policy.device)
        stats = self.optimise(tokens, self.loss)
        self.finish_update()
        return {**summarize(batch), **stats, "update_seconds": time.perf_counter() - t0}

    def loss(self, micro: TokenBatch, num_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO-clip token mean + vf_coef · value loss (+ kl_coef · k3 KL), for one micro-batch."""
        cfg = self.config
        log_probs, entropy, hidden = self.policy.forward(micro.input_ids, micro.attention_mask)
        mask = micro.response_mask
        count = max(1, int(mask.sum()))
        old, advantages = micro.values["old_log_probs"], micro.values["advantages"]  # (b, L−1)
        pg, stats = clipped_policy_loss(log_probs, old, advantages, mask, num_tokens,
                                        cfg.clip_low, cfg.clip_high)
        vl = value_loss(self.values(hidden), micro.values["returns"], mask, num_tokens)
        loss = pg + cfg.vf_coef * vl
        if self.reference is not None:
            kl = (kl_k3(log_probs, micro.values["ref_log_probs"]) * mask).sum() / num_tokens
            loss = loss + cfg.kl_coef * kl
            stats["kl"] = float(kl.detach()) * num_tokens / count
        stats |= {"pg_loss": float(pg.detach()) * num_tokens / count,
                  "value_loss": float(vl.detach()) * num_tokens / count,
                  "entropy": float((entropy.detach() * mask).sum()) / count,
                  "loss": float(loss.detach()) * num_tokens / count}
        return loss, stats

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {f"value_head.{k}": v for k, v in self.value_head.state_dict().items()}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {k[len("value_head."):]: v for k, v in tensors.items()}
        self.value_head.load_state_dict(state, strict=True)
