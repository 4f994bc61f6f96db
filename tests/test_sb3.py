"""Stable-Baselines3 on CandidateSegments: a short PPO run records full episode statistics.

The learning signal itself is shown by ``examples/sb3_ppo.py`` on the bundled model; this test
only checks the plumbing (a few hundred steps on the random fixture model).
"""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor

from repro_env.env import ReasoningEnv
from repro_env.proposer import ProposerConfig
from repro_env.wrappers import CandidateSegments, EpisodeStatistics


def make_env(model_dir) -> EpisodeStatistics:
    env = ReasoningEnv("RePro-Math-v0", scorer={"model": str(model_dir)}, limits={"max_steps": 3})
    env = CandidateSegments(env, k=2, proposer_config=ProposerConfig(max_new_tokens=6))
    # Monitor inside: SB3 then adds none, and EpisodeStatistics' info["episode"] reaches the buffer.
    return EpisodeStatistics(Monitor(env))


def test_ppo_runs_and_records_episode_statistics(tiny_llama_dir):
    env = make_env(tiny_llama_dir)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=192)
    assert model.num_timesteps == 192
    episodes = list(model.ep_info_buffer)
    # max_steps 3: at least 192 / 3 = 64 episodes, one step more per unfinished episode at most.
    assert len(episodes) >= 63
    for stats in episodes:
        assert {"r", "l", "t", "process_r", "outcome", "correct", "tokens", "backtracks"} <= set(stats)
        assert 1 <= stats["l"] <= 3
        assert stats["r"] == pytest.approx(stats["process_r"] + stats["outcome"], abs=1e-6)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(int(action))


def test_sb3_monitor_and_episode_statistics_agree(tiny_llama_dir):
    env = make_env(tiny_llama_dir)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    done, rewards = False, []
    while not done:
        _, reward, terminated, truncated, info = env.step(int(rng.integers(2)))
        rewards.append(reward)
        done = terminated or truncated
    monitor = env.env
    assert monitor.get_episode_rewards()[-1] == pytest.approx(info["episode"]["r"], abs=1e-6)
    assert monitor.get_episode_lengths()[-1] == info["episode"]["l"] == len(rewards)
    assert info["episode"]["r"] == pytest.approx(sum(rewards))
