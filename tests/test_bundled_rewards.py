"""With the bundled model, RePro prefers a clean reference solution to the same one with overthinking.

The undiscounted process return of an episode telescopes to α·S_T (REPRO_SPEC §4): it depends on
the last J only, which a redundant segment barely moves, so it cannot tell the two apart (about
half the problems either way; printed below). What the learners act on is the reward *per
segment* (return-to-go advantages), and there the clean solution wins: its mean process reward
per segment is higher.
"""

from __future__ import annotations

import random

import gymnasium as gym
import numpy as np

import repro_env  # noqa: F401
from repro_env.arithmetic import overthink

NUM_PROBLEMS = 100


def process_rewards(envs, plans: list[list[str]], indices: list[int]) -> list[list[float]]:
    """α·r̃ of every segment when sub-env i replays ``plans[i]`` on held-out problem ``indices[i]``."""
    envs.reset(options={"split": "test", "index": indices})
    plans = [list(p) for p in plans]
    rewards: list[list[float]] = [[] for _ in plans]
    done = np.zeros(len(plans), dtype=bool)
    while not done.all():
        actions = [plan.pop(0) if plan else "." for plan in plans]
        _, step_rewards, terminated, truncated, infos = envs.step(actions)
        for i in np.flatnonzero(infos["_outcome_reward"]):
            rewards[i].append(float(step_rewards[i] - infos["outcome_reward"][i]))
        done |= terminated | truncated
    return rewards


def test_reference_beats_injected_overthinking_per_segment():
    envs = gym.make_vec("RePro-Math-v0", num_envs=NUM_PROBLEMS, vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", limits={"max_steps": 24})
    source = envs.envs[0].source
    indices = list(range(NUM_PROBLEMS))
    clean = [list(source.get("test", i).solution) for i in indices]
    rng = random.Random(0)
    kinds = [("recheck", "false_start", "rumination")[i % 3] for i in indices]
    noisy = [list(overthink(plan, rng, kind, count=2)) for plan, kind in zip(clean, kinds, strict=True)]
    clean_r, noisy_r = process_rewards(envs, clean, indices), process_rewards(envs, noisy, indices)
    assert all(len(n) > len(c) for c, n in zip(clean_r, noisy_r, strict=True))
    mean_share = np.mean([np.mean(c) > np.mean(n) for c, n in zip(clean_r, noisy_r, strict=True)])
    sum_share = np.mean([np.sum(c) > np.sum(n) for c, n in zip(clean_r, noisy_r, strict=True)])
    print(f"\nreference > overthinking on {NUM_PROBLEMS} held-out problems: mean process reward per segment "
          f"{mean_share:.0%}, process return (telescoped sum) {sum_share:.0%}")
    assert mean_share >= 0.8
