"""Learning signals: an update moves probability towards rewarded rollouts; a tiny GRPO run improves.

The first tests use the random fixture model (it never answers right, so outcomes are assigned);
the last runs GRPO + RePro on the bundled tiny math model, at three seeds, and checks that its
accuracy on its training problems rises, and rises above that of the same learner fed a reward
with no signal (the null).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from repro_env.agents.episodes import pack
from repro_env.agents.grpo import GRPO, GRPOBatch, GRPOConfig
from repro_env.agents.ppo import PPO, PPOConfig

GAIN = 0.1
"""Least rise of the training-set accuracy (test_grpo_raises_the_training_set_accuracy_…)."""
MARGIN = 0.2
"""Least lead of the learner's training-set accuracy over its null's at the same seed."""


@pytest.fixture(scope="module")
def fixture_task(tiny_llama_dir):
    from repro_env.tasks import resolve_task

    return resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir)},
                                          "limits": {"max_steps": 2, "max_segment_tokens": 6}})


def mean_log_prob(learner, episodes) -> list[float]:
    """Mean log-prob of each episode's generated tokens under the current policy."""
    batch = pack(episodes, learner.pad_id)
    with torch.no_grad():
        log_probs, _, _ = learner.policy.forward(batch.input_ids, batch.attention_mask)  # (B, L−1)
    mask = batch.response_mask.float()
    return ((log_probs * mask).sum(1) / mask.sum(1)).tolist()


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_an_update_raises_the_rewarded_rollouts_and_lowers_the_others(algorithm, fixture_task, tiny_llama_dir):
    common = {"model": str(tiny_llama_dir), "lr": 3e-3, "epochs": 2, "kl_coef": 0.0,
              "scorer_follows_policy": False, "micro_batch_size": 8}
    if algorithm == "grpo":
        learner = GRPO(GRPOConfig(**common, prompts_per_update=1, group_size=4), fixture_task, seed=1)
        batch = learner.collect()
        episodes = batch.episodes
    else:
        learner = PPO(PPOConfig(**common, episodes_per_update=4, value_lr=1e-2), fixture_task, seed=1)
        batch = episodes = learner.collect()
    for i, episode in enumerate(episodes):
        episode.outcome = float(i % 2 == 0)  # rollouts 0 and 2 "answered right"
    before = mean_log_prob(learner, episodes)
    learner.update(batch)
    after = mean_log_prob(learner, episodes)
    change = [a - b for a, b in zip(after, before, strict=True)]
    print(f"{algorithm}: mean log-prob change per rollout {[round(c, 3) for c in change]}")
    assert change[0] > 0.5 and change[2] > 0.5  # measured: about +1.8 to +2.1
    assert change[1] < -0.5 and change[3] < -0.5  # measured: about -2.9 to -4.3


PROBLEMS = [7, 15, 25, 28]
"""Train problems the bundled model solves 25-63% of the time at T = 1 (16 samples each): room to learn."""
GROUP = 8
UPDATES = 4


def train_on_fixed_problems(seed: int, null: bool) -> tuple[float, float]:
    """RePro-GRPO for ``UPDATES`` updates, each on ``GROUP`` rollouts of every problem of ``PROBLEMS``.

    ``null`` replaces the reward by one with no signal before each update: every outcome a fair coin
    flip, every process reward 0 (the advantages keep their size, they just point nowhere).
    Returns the training-set accuracy before (the first update's 32 rollouts, the same draws for
    the learner and its null) and after (64 fresh rollouts).
    """
    config = GRPOConfig(lr=3e-4, prompts_per_update=len(PROBLEMS), group_size=GROUP, kl_coef=0.0,
                        micro_batch_size=32, scorer_follows_policy=False)
    learner = GRPO(config, "RePro-Math-v0", seed=seed)
    indices = np.repeat(PROBLEMS, GROUP).tolist()
    groups = np.repeat(np.arange(len(PROBLEMS)), GROUP)
    coin = np.random.default_rng(seed)
    accuracies = []
    for _ in range(UPDATES):
        episodes = learner.rollouts(indices)
        accuracies.append(np.mean([e.outcome for e in episodes]))
        if null:
            for episode in episodes:
                episode.outcome = float(coin.random() < 0.5)
                episode.process_rewards = [0.0] * len(episode.process_rewards)
        metrics = learner.update(GRPOBatch(episodes, groups))
        assert all(math.isfinite(v) for v in metrics.values())
    after = np.mean([e.outcome for e in learner.rollouts(indices) + learner.rollouts(indices)])
    return float(accuracies[0]), float(after)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_raises_the_training_set_accuracy_and_its_null_does_not(seed):
    """RePro-GRPO against the same learner fed a reward with no signal, about 20 s per seed on the
    2-core machine at load below 2.

    4 updates of 4 train problems x 8 rollouts, lr 3e-4, no KL; accuracy sampled at T = 1.
    Measured at seeds 0-5 (before: the first update's rollouts, paired; after: 64 rollouts):

    | seed | before | after | null after | gain | null gain | after - null after |
    |---|---|---|---|---|---|---|
    | 0 | 0.438 | 0.828 | 0.078 | +0.39 | -0.36 | 0.75 |
    | 1 | 0.562 | 0.750 | 0.203 | +0.19 | -0.36 | 0.55 |
    | 2 | 0.469 | 0.828 | 0.250 | +0.36 | -0.22 | 0.58 |
    | 3 | 0.531 | 0.953 | 0.203 | +0.42 | -0.33 | 0.75 |
    | 4 | 0.438 | 0.828 | 0.312 | +0.39 | -0.13 | 0.52 |
    | 5 | 0.531 | 0.797 | 0.500 | +0.27 | -0.03 | 0.30 |

    The null's spread: after 0.08 to 0.50 (mean 0.26), gain -0.36 to -0.03; its random updates
    move the weights away from the right answers. The learner: gain +0.19 to +0.42, after 0.75 to
    0.95. The bars are ``GAIN`` = 0.1 (above every null gain, half the learner's smallest) and
    ``MARGIN`` = 0.2 over the null at the same seed (2/3 of the smallest measured margin, 0.30).

    Tried once against the null (this test with the null's figures in place of the learner's,
    seed 0): fails with ``gain -0.36 <= 0.1``.
    """
    before, after = train_on_fixed_problems(seed, null=False)
    _, null_after = train_on_fixed_problems(seed, null=True)
    print(f"seed {seed}: training-set accuracy {before:.3f} -> {after:.3f}; null -> {null_after:.3f}")
    assert after - before > GAIN, f"gain {after - before:+.2f} <= {GAIN}"
    assert after - null_after > MARGIN, f"margin over the null {after - null_after:.2f} <= {MARGIN}"
