"""With the bundled model, RePro gives inserted overthinking segments lower advantages than the
reference segments of the same episode: the claim the learners act on.

Each held-out problem makes a GRPO group of four replays: its reference solution, and the same
solution with two recheck, false-start or rumination segments inserted (``arithmetic.overthink``).
For every overthinking replay we ask whether its inserted segments' mean process advantage Ã
(group-normalised r̃, return-to-go, REPRO_SPEC §5) is below that of its reference segments.

The segment that states the final answer is not scored (REPRO_SPEC §4): its Ã is 0, as the
trainers give its tokens, and it counts among the reference segments (in 20 of the 120 replays,
false starts that rewrite every step, it is the only one).

A reward that carries no information about which segments were inserted must not pass, so the
share is compared with two nulls computed on the same replays:

- ``permuted``: each episode's r̃ in a random order over its scored segments (same values and
  insertion positions);
- ``last``: the episode's whole process return paid on its last scored segment only (α·S at the end
  of the reasoning, the same total as RePro's telescoped return), which passed the test this one
  replaces 100% of the time.

Measured on 40 problems (120 overthinking replays): RePro 90%, ``permuted`` 53% on average over 200
orders (95th percentile 60%), ``last`` 8%. On the segments' own centred r̃ (no return-to-go) the
figure is 86% against 58%. Left out of both means, the final-answer segment leaves 100 replays with
reference segments to compare: there RePro 75%, ``permuted`` 48% (95th percentile 56%), ``last``
13%; centred r̃ 82% against 49%.

Before the final-answer segment was left unscored (issue 24), when it was the last scored point
and J fell there in 81% of these replays, the same measure gave RePro 82%, ``permuted`` 52% (95th
percentile 59%), ``last`` 57%; centred r̃ 65% against 49%. The test asserts RePro beats both nulls
by 0.1.
"""

from __future__ import annotations

import difflib
import random

import gymnasium as gym
import numpy as np

import repro_env  # noqa: F401
from repro_env.arithmetic import overthink
from repro_env.reward import grpo_process_advantages

NUM_PROBLEMS = 40
KINDS = ("recheck", "false_start", "rumination")
GROUP = 1 + len(KINDS)


def replay(envs, plans: list[list[str]], indices: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Process reward α·r̃ of every segment, and whether it was scored, when sub-env i replays
    ``plans[i]`` on test problem ``indices[i]``."""
    envs.reset(options={"split": "test", "index": indices})
    plans = [list(p) for p in plans]
    rewards: list[list[float]] = [[] for _ in plans]
    scored: list[list[bool]] = [[] for _ in plans]
    done = np.zeros(len(plans), dtype=bool)
    while not done.all():
        actions = [plan.pop(0) if plan else "." for plan in plans]
        _, step_rewards, terminated, truncated, infos = envs.step(actions)
        for i in np.flatnonzero(infos["_outcome_reward"] & ~done):
            rewards[i].append(float(step_rewards[i] - infos["outcome_reward"][i]))
            scored[i].append(bool(infos["scored"][i]))
        done |= terminated | truncated
    return [np.array(r) for r in rewards], [np.array(s) for s in scored]


def inserted(clean: list[str], noisy: list[str]) -> np.ndarray:
    """(T,) True for the segments of ``noisy`` that are not the reference's."""
    flags = np.ones(len(noisy), dtype=bool)
    for _, start, size in difflib.SequenceMatcher(a=clean, b=noisy, autojunk=False).get_matching_blocks():
        flags[start:start + size] = False
    return flags


def share_below(rewards: list[np.ndarray], flags: list[np.ndarray], scored: list[np.ndarray]) -> float:
    """Share of overthinking replays whose inserted segments' mean Ã is below their reference segments'."""
    wins = []
    for g in range(0, len(rewards), GROUP):
        advantages = grpo_process_advantages(rewards[g:g + GROUP], scored[g:g + GROUP])
        for j in range(1, GROUP):
            f = flags[g + j]
            wins.append(advantages[j][f].mean() < advantages[j][~f].mean())
    return float(np.mean(wins))


def test_inserted_overthinking_gets_lower_advantages_than_the_reference_segments():
    envs = gym.make_vec("RePro-Math-v0", num_envs=GROUP * NUM_PROBLEMS, vectorization_mode="vector_entry_point",
                        autoreset_mode="disabled", limits={"max_steps": 24})
    source = envs.envs[0].source
    rng = random.Random(0)
    plans, indices, flags = [], [], []
    for i in range(NUM_PROBLEMS):
        clean = list(source.get("test", i).solution)
        for kind in (None, *KINDS):
            plan = clean if kind is None else list(overthink(clean, rng, kind, count=2))
            plans.append(plan)
            indices.append(i)
            flags.append(inserted(clean, plan))
    rewards, scored = replay(envs, plans, indices)
    assert all(len(r) == len(p) for r, p in zip(rewards, plans, strict=True))  # one reward per segment
    assert all(f.any() and not f.all() for f in flags[1::GROUP] + flags[2::GROUP] + flags[3::GROUP])
    # the segment that states the answer (the last) is the only unscored one, and pays no process reward
    assert all(s[:-1].all() and not s[-1] and r[-1] == 0.0 for r, s in zip(rewards, scored, strict=True))

    def on_last_scored(r: np.ndarray, s: np.ndarray) -> np.ndarray:
        out = np.zeros(r.size)
        out[np.flatnonzero(s)[-1]] = r.sum()
        return out

    def permute_scored(r: np.ndarray, s: np.ndarray) -> np.ndarray:
        out = r.copy()
        out[s] = order.permutation(r[s])
        return out

    repro = share_below(rewards, flags, scored)
    last = share_below([on_last_scored(r, s) for r, s in zip(rewards, scored, strict=True)], flags, scored)
    order = np.random.default_rng(0)
    permuted = [share_below([permute_scored(r, s) for r, s in zip(rewards, scored, strict=True)], flags, scored)
                for _ in range(50)]
    print(f"\ninserted segments' mean advantage below the reference segments' ({len(rewards) - NUM_PROBLEMS} "
          f"overthinking replays): RePro {repro:.0%}; nulls: last-segment total {last:.0%}, permuted "
          f"{np.mean(permuted):.0%} (95th percentile {np.percentile(permuted, 95):.0%})")
    assert repro >= max(last, float(np.percentile(permuted, 95))) + 0.1
