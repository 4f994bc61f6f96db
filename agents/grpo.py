"""GRPO with the RePro process reward (REPRO_SPEC §5); ``process_reward: false`` is plain GRPO.

One update, top to bottom::

    indices  = P problems from the train split; each is given to G sub-envs (a group)
    episodes = one rollout per sub-env (agents.episodes.collect_episodes)
    R'       = R + w_len·len_reward        Kimi k1.5 length reward, off unless length_penalty > 0
    A        = (R' − mean_g R') / (std_g R' + 1e-6)                    per rollout
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

from repro_env.advantages import grpo_advantages, token_advantages
from repro_env.agents.episodes import Episode, TokenBatch, pack, summarize
from repro_env.agents.learner import LearnerConfig, LMLearner
from repro_env.agents.losses import clipped_policy_loss, kl_k3
from repro_env.config import check
from repro_env.length_penalty import length_rewards


@dataclass(frozen=True)
class GRPOConfig(LearnerConfig):
    """GRPO: every :class:`LearnerConfig` field plus the group layout."""

    prompts_per_update: int = 4
    """P: problems per update."""
    group_size: int = 8
    """G: rollouts per problem (the paper's n = 8); the update runs P·G envs in parallel."""
    length_penalty: float = 0.0
    """w_len: weight of Kimi k1.5's group-relative length reward (:mod:`repro_env.length_penalty`),
    added to the outcome reward before the group normalisation; 0 turns it off. A baseline, not RePro."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.prompts_per_update, int) and self.prompts_per_update >= 1, "prompts_per_update",
              self.prompts_per_update, "an int >= 1")
        check(isinstance(self.group_size, int) and self.group_size >= 2, "group_size", self.group_size,
              "an int >= 2 (a group needs a spread to normalise)")
        check(isinstance(self.length_penalty, int | float) and not isinstance(self.length_penalty, bool)
              and 0 <= self.length_penalty < np.inf, "length_penalty", self.length_penalty,
              "a finite number >= 0 (the weight of the length reward; 0 turns it off)")

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


def episode_length_rewards(episodes: Sequence[Episode], groups: Sequence[int]) -> np.ndarray:
    """(N,) Kimi k1.5 length reward of each episode within its group, length = its generated tokens."""
    return length_rewards([e.response_tokens for e in episodes], [e.correct for e in episodes], groups)


def grpo_token_advantages(episodes: Sequence[Episode], groups: Sequence[int], alpha: float,
                          length_penalty: float = 0.0) -> list[np.ndarray]:
    """Per generated token Â = A + α·Ã of every episode, grouped by ``groups`` (REPRO_SPEC §5).

    Unscored segments take no part in the pooled normalisation and add 0 to the return-to-go.
    ``length_penalty`` w_len > 0 forms each group's outcome reward as R' = R + w_len·len_reward
    (:func:`episode_length_rewards`) before A normalises it. Returns one (N_i,) array per episode,
    N_i its generated tokens in order.
    """
    groups = np.asarray(groups)
    R = np.array([e.outcome for e in episodes], dtype=np.float64)  # (N,)
    if length_penalty:
        R = R + length_penalty * episode_length_rewards(episodes, groups)
    out: list[np.ndarray | None] = [None] * len(episodes)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        A, segment_adv = grpo_advantages(R[members], [episodes[i].process_rewards for i in members],
                                            [episodes[i].scored for i in members], alpha)
        for i, a, adv in zip(members, A, segment_adv, strict=True):
            counts = episodes[i].segment_token_counts()
            out[i] = token_advantages(adv, counts, 0, outcome_advantage=float(a))
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
        weight = self.config.length_penalty
        advantages = grpo_token_advantages(batch.episodes, batch.groups, self.alpha, weight)
        tokens = pack(batch.episodes, self.pad_id, {"advantages": advantages}, device=self.policy.device)
        self.add_reference_log_probs(tokens)
        stats = self.optimise(tokens, self.loss)
        self.finish_update()
        metrics = {**summarize(batch.episodes), **stats}
        if weight:  # the mean term added to R, w_len·len_reward
            metrics["length_reward"] = float(np.mean(weight * episode_length_rewards(batch.episodes, batch.groups)))
        return {**metrics, "collect_seconds": batch.seconds, "update_seconds": time.perf_counter() - t0}

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
