"""Env throughput: N independent envs stepped one by one vs one vector env with one scorer call per step.

    python benchmarks/bench_env.py                 # N = 1, 8, 32, 64 on RePro-Math-v0, bundled model
    python benchmarks/bench_env.py --sizes 1 8 --episodes 2 --repeats 1

Every sub-env replays reference solutions of held-out problems, so both setups do the same work.
Prints steps/s and scored tokens/s (tokens appended to the scored prefixes plus answer copies),
the tokens/s the model was actually fed (scored tokens plus the prompts prefilled at reset and the
token before each segment, recomputed for its entropy), and the reference: a plain forward pass of
the same model at batch N over rows as long as the vector env's mean row, timed in the same run.
Each setup runs ``--repeats`` times, the two setups taking turns; the table shows the median run
(runs of a few seconds on a 2-core machine vary by ±15%).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch
from tqdm import tqdm

import repro_env  # noqa: F401
from repro_env.scoring import hf_session

FED = {"tokens": 0, "rows": 0}


def _count_fed(run_steps):
    def counted(scorer, steps):
        FED["tokens"] += sum(len(step.inputs) for step in steps)
        FED["rows"] += len(steps)
        return run_steps(scorer, steps)
    return counted


hf_session._run_steps = _count_fed(hf_session._run_steps)  # every session step's forward goes through it


@torch.no_grad()
def raw_forward(model, batch: int, length: int, seconds: float = 1.0) -> float:
    """Tokens/s of a plain causal forward over (batch, length) random ids."""
    ids = torch.randint(10, model.config.vocab_size, (batch, length))
    model.base_model(input_ids=ids)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model.base_model(input_ids=ids)
        calls += 1
    return batch * length * calls / (time.perf_counter() - start)


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per sub-env")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup; the median is shown")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: N in (1, 2), 1 episode (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.episodes, args.repeats = [1, 2], 1, 1
    torch.set_num_threads(args.threads)
    scorer = {"model": args.model}
    run_single(args.task, 1, 1, scorer)  # warm-up: load the model once (shared by every env)
    model = gym.make(args.task, scorer=scorer).unwrapped.scorer.model
    rows = []
    for n in tqdm(args.sizes, desc="sizes"):
        runs: dict[str, list] = {"1 env x N": [], "vector env": []}
        for _ in range(args.repeats):
            for name, run in (("1 env x N", run_single), ("vector env", run_vector)):
                FED.update(tokens=0, rows=0)
                steps, tokens, seconds = run(args.task, n, args.episodes, scorer)
                row_len = max(1, round(FED["tokens"] / FED["rows"]))
                raw = raw_forward(model, n, row_len) if name == "vector env" else None
                runs[name].append((n, name, steps, steps / seconds, tokens / seconds, FED["tokens"] / seconds, raw))
        for done in runs.values():
            rows.append(sorted(done, key=lambda row: row[3])[len(done) // 2])  # the median run by steps/s
    print(f"\n{'N':>4}  {'setup':<11} {'steps':>6} {'steps/s':>9} {'scored tok/s':>13} {'fed tok/s':>10} "
          f"{'raw fwd tok/s':>14} {'scored/raw':>11} {'fed/raw':>8} {'vector/1xN':>11}")
    single_sps = {}
    for n, name, steps, sps, tps, fed, raw in rows:
        if raw is None:
            single_sps[n] = sps
            print(f"{n:>4}  {name:<11} {steps:>6} {sps:>9.1f} {tps:>13.0f} {fed:>10.0f}")
        else:
            print(f"{n:>4}  {name:<11} {steps:>6} {sps:>9.1f} {tps:>13.0f} {fed:>10.0f} {raw:>14.0f} "
                  f"{tps / raw:>11.2f} {fed / raw:>8.2f} {sps / single_sps[n]:>11.2f}")


if __name__ == "__main__":
    main()
