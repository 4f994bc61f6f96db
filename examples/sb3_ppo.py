"""Stable-Baselines3 PPO picks reasoning segments on RePro-Math-v0 (a few minutes on a CPU).

The bundled tiny math model proposes K candidate next segments at every step (sampled at
temperature 1.0); the policy sees numeric features of the candidates (``CandidateSegments``) and
picks one. The reward is the env's: α·RePro process reward per segment + 1 for a correct answer.

Before and after training, the same held-out test problems (same seeds, so the same first
candidates) are solved by choosing at random and by the trained policy (``--eval-untrained`` adds
the untrained policy). Accuracy differs by several points between seed sets even for the same
policy, so the table prints standard errors; compare policies on the same seeds only.

    python examples/sb3_ppo.py                      # defaults: ~5 minutes on 2 CPU cores
    python examples/sb3_ppo.py --timesteps 4000 --eval-episodes 200
    python examples/sb3_ppo.py --smoke              # one PPO rollout of 128 steps, 8 test problems
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor

import repro_env  # noqa: F401  (registers RePro-Math-v0)
from repro_env.wrappers import CandidateSegments, EpisodeStatistics

Policy = Callable[[np.ndarray], int]


def make_env(args: argparse.Namespace) -> gym.Env:
    overrides = {} if args.model == "bundled" else {"scorer": {"model": args.model}}
    env = gym.make(args.task, **overrides)
    env = CandidateSegments(env, k=args.k)
    # Monitor inside EpisodeStatistics: SB3 adds no Monitor of its own, and the full statistics
    # (accuracy, process return) reach model.ep_info_buffer.
    return EpisodeStatistics(Monitor(env))


def evaluate(env: gym.Env, policy: Policy, episodes: int, seed: int) -> dict[str, float]:
    """Mean episode statistics over test problems 0..episodes−1 (reset seed ``seed + i``), with the
    standard errors of the return and the accuracy (``r_se``, ``correct_se``)."""
    rows = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i, options={"split": "test", "index": i})
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs))
            done = terminated or truncated
        rows.append(info["episode"])
    means = {key: float(np.mean([row[key] for row in rows]))
             for key in ("r", "correct", "process_r", "l", "tokens", "backtracks")}
    for key in ("r", "correct"):
        means[f"{key}_se"] = float(np.std([row[key] for row in rows], ddof=1) / np.sqrt(episodes))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=1500, help="PPO training steps (segments chosen)")
    parser.add_argument("--eval-episodes", type=int, default=100, help="held-out test problems per policy")
    parser.add_argument("--k", type=int, default=4, help="candidate segments per step")
    parser.add_argument("--task", default="RePro-Math-v0")
    parser.add_argument("--model", default="bundled", help="scorer + proposer model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-untrained", action="store_true", help="also evaluate the untrained policy")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; one is fastest for the tiny model's small matmuls")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 128 training steps, 8 test problems (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.timesteps, args.eval_episodes = 128, 8
    torch.set_num_threads(args.threads)

    env = make_env(args)
    # Short rollouts (128 steps, about 30 episodes) so that a few minutes hold about a dozen updates.
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=10, learning_rate=1e-3,
                gamma=1.0, gae_lambda=0.95, seed=args.seed, device="cpu", verbose=0)
    rng = np.random.default_rng(args.seed)

    def random_choice(obs: np.ndarray) -> int:
        return int(rng.integers(args.k))

    def trained(obs: np.ndarray) -> int:
        return int(model.predict(obs, deterministic=True)[0])

    eval_seed = 10_000 + args.seed
    start = time.perf_counter()
    results = {"random choice": evaluate(env, random_choice, args.eval_episodes, eval_seed)}
    eval_time = time.perf_counter() - start
    if args.eval_untrained:
        results["PPO, untrained"] = evaluate(env, trained, args.eval_episodes, eval_seed)

    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps)
    train_time = time.perf_counter() - start
    train_episodes = len(model.ep_info_buffer)
    results["PPO, trained"] = evaluate(env, trained, args.eval_episodes, eval_seed)

    print(f"\n{args.task}, K={args.k} candidates, {args.eval_episodes} held-out test problems")
    print(f"{'policy':<16} {'return':>14} {'accuracy':>15} {'process r':>10} {'steps':>6} {'tokens':>7} "
          f"{'backtracks':>10}")
    for name, m in results.items():
        print(f"{name:<16} {m['r']:>7.3f} ± {m['r_se']:.3f} {m['correct']:>7.1%} ± {m['correct_se']:>5.1%} "
              f"{m['process_r']:>10.4f} {m['l']:>6.2f} {m['tokens']:>7.1f} {m['backtracks']:>10.2f}")
    print(f"\ntraining: {args.timesteps} steps in {train_time:.0f} s ({args.timesteps / train_time:.1f} steps/s; "
          f"last {train_episodes} training episodes: mean return "
          f"{np.mean([e['r'] for e in model.ep_info_buffer]):.3f}); "
          f"evaluation: {eval_time:.0f} s per policy")
    gain = results["PPO, trained"]["r"] - results["random choice"]["r"]
    print(f"trained − random: return {gain:+.3f}, accuracy "
          f"{results['PPO, trained']['correct'] - results['random choice']['correct']:+.1%}")


if __name__ == "__main__":
    main()
