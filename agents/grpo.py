"""GRPO with the RePro process reward (REPRO_SPEC §5); ``process_reward: false`` is plain GRPO.

One update, top to bottom::

    indices  = P problems from the train split; each is given to G sub-envs (a group)
    episodes = one rollout per sub-env (agents.rollout.collect_episodes)
    A        = (R − mean_g R) / (std_g R + 1e-6)                       per rollout
    r̃'       = (r̃ − μ_g) / (σ_g + 1e-6)    over the group's scored segments
    Ã_j      = Σ_{j' ≥ j} r̃'_{j'}                                       return-to-go per segment
    Â        = A + α·Ã                     broadcast to the segment's generated tokens
    loss     = PPO-clip token mean (+ kl_coef · k3 KL to the initial policy), epochs × minibatches

The advantage math is :mod:`repro_env.reward`'s; this module only groups episodes and broadcasts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repro_env import reward as rp
from repro_env.agents.learner import LearnerConfig, LMLearner
from repro_env.agents.losses import clipped_policy_loss, kl_k3
from repro_env.agents.rollout import Episode, TokenBatch, pack, summarize
from repro_env.config import check


@dataclass(frozen=True)
class GRPOConfig(LearnerConfig):
    """GRPO: every :class:`LearnerConfig` field plus the group layout."""

    prompts_per_update: int = 4
    """P: problems per update."""
    group_size: int = 8
    """G: rollouts per problem (the paper's n = 8); the update runs P·G envs in parallel."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.prompts_per_update, int) and self.prompts_per_update >= 1, "prompts_per_update",
              self.prompts_per_update, "an int >= 1")
        check(isinstance(self.group_size, int) and self.group_size >= 2, "group_size", self.group_size,
              "an int >= 2 (a group needs a spread to normalise)")

    @property
    def rollouts_per_update(self) -> int:
        """P·G: episodes per collect, the budget ``repro-env compare`` holds equal across learners."""
        return self.prompts_per_update * self.group_size


@dataclass
class GRPOBatch:
    """Episodes of one collect and the group (problem slot) of each."""

    episodes: list[Episode]
    groups: np.ndarray
    """(P·G,) group id of each episode."""
    seconds: float = 0.0


def grpo_token_advantages(episodes: Sequence[Episode], groups: Sequence[int],
                          alpha: float) -> list[np.ndarray]:
    """Per generated token Â = A + α·Ã of every episode, grouped by ``groups`` (REPRO_SPEC §5).

    Unscored segments take no part in the pooled normalisation and add 0 to the return-to-go.
    Returns one (N_i,) array per episode, N_i its generated tokens in order.
    """
    groups = np.asarray(groups)
    out: list[np.ndarray | None] = [None] * len(episodes)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        R = [episodes[i].outcome for i in members]
        A, segment_adv = rp.grpo_advantages(R, [episodes[i].process_rewards for i in members],
                                            [episodes[i].scored for i in members], alpha)
        for i, a, adv in zip(members, A, segment_adv, strict=True):
            counts = episodes[i].segment_token_counts()
            out[i] = rp.token_advantages(adv, counts, 0, outcome_advantage=float(a))
    return out  # type: ignore[return-value]


class GRPO(LMLearner):
    """RePro-GRPO learner (module docstring); implements :class:`repro_env.agents.base.Learner`."""

    config_class = GRPOConfig
    label = "GRPO"

    def __init__(self, config: GRPOConfig | None = None, task: Any = "RePro-Math-v0", *,
                 seed: int = 0) -> None:
        config = config or GRPOConfig()
        super().__init__(config, task, seed=seed, num_envs=config.rollouts_per_update)
        self.make_optimizer([{"params": list(self.policy.model.parameters())}])

    def collect(self) -> GRPOBatch:
        """G rollouts of each of P random train problems."""
        cfg = self.config
        t0 = time.perf_counter()
        problems = self.rng.integers(self.train_size, size=cfg.prompts_per_update)
        indices = np.repeat(problems, cfg.group_size).tolist()
        episodes = self.rollouts(indices)
        return GRPOBatch(episodes, np.repeat(np.arange(cfg.prompts_per_update), cfg.group_size),
                         time.perf_counter() - t0)

    def update(self, batch: GRPOBatch) -> dict[str, float]:
        """Advantages, then ``epochs`` × ``minibatches`` clipped-surrogate steps; returns metrics."""
        t0 = time.perf_counter()
        advantages = grpo_token_advantages(batch.episodes, batch.groups, self.alpha)
        tokens = pack(batch.episodes, self.pad_id, {"advantages": advantages}, device=self.policy.device)
        self.add_reference_log_probs(tokens)
        stats = self.optimise(tokens, self.loss)
        self.finish_update()
        return {**summarize(batch.episodes), **stats, "collect_seconds": batch.seconds,
                "update_seconds": time.perf_counter() - t0}

    def loss(self, micro: TokenBatch, num_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO-clip token-mean surrogate plus ``kl_coef`` · k3 KL, for one micro-batch."""
        cfg = self.config
        log_probs, entropy, _ = self.policy.forward(micro.input_ids, micro.attention_mask)  # (b, L−1)
        mask = micro.response_mask
        count = max(1, int(mask.sum()))
        old, advantages = micro.values["old_log_probs"], micro.values["advantages"]  # (b, L−1)
        loss, stats = clipped_policy_loss(log_probs, old, advantages, mask, num_tokens,
                                          cfg.clip_low, cfg.clip_high)
        stats["pg_loss"] = float(loss.detach()) * num_tokens / count
        if self.reference is not None:
            kl = (kl_k3(log_probs, micro.values["ref_log_probs"]) * mask).sum() / num_tokens
            loss = loss + cfg.kl_coef * kl
            stats["kl"] = float(kl.detach()) * num_tokens / count
        stats["entropy"] = float((entropy.detach() * mask).sum()) / count
        stats["loss"] = float(loss.detach()) * num_tokens / count
        return loss, stats
