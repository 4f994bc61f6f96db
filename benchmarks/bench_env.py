"""Env throughput: N independent envs stepped one by one vs one vector env with one scorer call per step.

    python benchmarks/bench_env.py                 # N = 1, 8, 32 on RePro-Math-v0, bundled model
    python benchmarks/bench_env.py --sizes 1 8 --episodes 2

Every sub-env replays reference solutions of held-out problems, so both setups do the same work.
Prints steps/s and scored tokens/s (tokens appended to the scored prefixes plus answer copies).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch
from tqdm import tqdm

import repro_env  # noqa: F401


def run_single(task: str, n: int, episodes: int, scorer: dict) -> tuple[int, int, float]:
    envs = [gym.make(task, scorer=scorer) for _ in range(n)]
    answer_len = None
    steps = tokens = 0
    start = time.perf_counter()
    for episode in range(episodes):
        for k, env in enumerate(envs):
            index = episode * n + k
            env.reset(options={"split": "test", "index": index})
            answer_len = answer_len or len(env.unwrapped.scorer.answer_ids(env.unwrapped.episode.answer))
            for segment in env.unwrapped.source.get("test", index).solution:
                *_, terminated, truncated, info = env.step(segment)
                steps += 1
                tokens += info["segment_tokens"] + answer_len
                if terminated or truncated:
                    break
    return steps, tokens, time.perf_counter() - start


def run_vector(task: str, n: int, episodes: int, scorer: dict) -> tuple[int, int, float]:
    envs = gym.make_vec(task, num_envs=n, vectorization_mode="vector_entry_point", scorer=scorer,
                        autoreset_mode="disabled")
    source = envs.envs[0].source
    steps = tokens = 0
    start = time.perf_counter()
    for episode in range(episodes):
        indices = [episode * n + k for k in range(n)]
        envs.reset(options={"split": "test", "index": indices})
        plans = [list(source.get("test", i).solution) for i in indices]
        answer_len = len(envs.scorer.answer_ids(envs.envs[0].episode.answer))
        done = [False] * n
        while not all(done):
            actions = [plan.pop(0) if plan else "." for plan in plans]
            _, _, terminated, truncated, infos = envs.step(actions)
            for k in range(n):
                if not done[k] and infos["_J"][k]:
                    steps += 1
                    tokens += int(infos["segment_tokens"][k]) + answer_len
                done[k] = done[k] or bool(terminated[k] or truncated[k])
    return steps, tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="RePro-Math-v0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--episodes", type=int, default=2, help="episodes per sub-env")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: N in (1, 2), 1 episode (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.episodes = [1, 2], 1
    torch.set_num_threads(args.threads)
    scorer = {"model": args.model}
    run_single(args.task, 1, 1, scorer)  # warm-up: load the model once (shared by every env)
    rows = []
    for n in tqdm(args.sizes, desc="sizes"):
        for name, run in (("1 env x N", run_single), ("vector env", run_vector)):
            steps, tokens, seconds = run(args.task, n, args.episodes, scorer)
            rows.append((n, name, steps, steps / seconds, tokens / seconds))
    print(f"\n{'N':>4}  {'setup':<11} {'steps':>6} {'steps/s':>9} {'scored tok/s':>13}")
    for n, name, steps, sps, tps in rows:
        print(f"{n:>4}  {name:<11} {steps:>6} {sps:>9.1f} {tps:>13.0f}")


if __name__ == "__main__":
    main()
