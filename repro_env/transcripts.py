"""Run episodes and print what RePro pays for each segment (``repro-env rollout`` and the demo)."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from repro_env.config import SEED_RANGE, check, describe, is_seed, suggest
from repro_env.errors import ActionError, TaskSpecError
from repro_env.registration import register_task, registered_ids

Policy = Callable[[str, gym.Env], str]
"""Maps the observation (prompt + reasoning so far) and the env to the next segment."""


@dataclass(frozen=True)
class EpisodeRecord:
    problem_id: str
    segments: tuple[str, ...]
    infos: tuple[dict, ...]
    rewards: tuple[float, ...]
    correct: bool
    truncated: bool

    @property
    def process_return(self) -> float:
        return sum(r - i["outcome_reward"] for r, i in zip(self.rewards, self.infos, strict=True))

    @property
    def backtracks(self) -> int:
        return sum(bool(i["backtrack"]) for i in self.infos)


def run_episode(env: gym.Env, policy: Policy, *, seed: int | None = None,
                options: dict | None = None) -> EpisodeRecord:
    """One episode of ``policy`` in ``env``; every step's info is kept."""
    obs, info = env.reset(seed=seed, options=options)
    segments, infos, rewards = [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        segment = policy(obs, env)
        obs, reward, terminated, truncated, step_info = env.step(segment)
        segments.append(segment)
        infos.append(step_info)
        rewards.append(float(reward))
    return EpisodeRecord(info["problem_id"], tuple(segments), tuple(infos), tuple(rewards),
                         bool(infos[-1].get("correct", False)), truncated)


def reference_policy(obs: str, env: gym.Env) -> str:
    """Replays the current problem's reference solution (sources that have one)."""
    episode = env.unwrapped.episode
    solution = episode.problem.solution
    if not solution:
        answer = env.unwrapped.spec_task.render_answer(episode.problem)
        return f"The answer is {answer}."
    return solution[min(len(episode.segments), len(solution) - 1)]


def scripted_policy(segments: Iterable[str]) -> Policy:
    """Plays the given segments in order (for demos and tests)."""
    queue = list(segments)

    def play(obs: str, env: gym.Env) -> str:
        if not queue:
            raise ActionError("scripted policy ran out of segments before the episode ended")
        return queue.pop(0)

    return play


def model_policy(model: str, task, *, temperature: float = 1.0, max_new_tokens: int = 64) -> Policy:
    """Samples each next segment from a language model (``bundled`` or a directory)."""
    from repro_env.proposer import LMProposer, ProposerConfig
    from repro_env.wrappers import load_model

    proposer = LMProposer(*load_model(model), delimiter=task.delimiter, final_answer=task.final_answer_regex,
                          config=ProposerConfig(max_new_tokens=max_new_tokens, temperature=temperature))

    def play(obs: str, env: gym.Env) -> str:
        return proposer(obs, 1, env.unwrapped.np_random)[0]

    return play


def format_episode(record: EpisodeRecord) -> str:
    """A table of one episode: each segment with J, its scores and its reward."""
    lines = [f"episode {record.problem_id}: correct={record.correct} truncated={record.truncated}",
             f"  {'t':>2} {'J':>8} {'S_magn':>7} {'S_stab':>7} {'S':>7} {'r~':>8} {'reward':>8} bt  segment"]
    for t, (segment, info, r) in enumerate(zip(record.segments, record.infos, record.rewards, strict=True), 1):
        text = segment.strip().replace("\n", " ")
        lines.append(f"  {t:>2} {info['J']:>8.4f} {info['magnitude']:>7.4f} {info['stability']:>7.4f} "
                     f"{info['process_score']:>7.4f} {info['process_reward']:>+8.4f} {r:>+8.4f} "
                     f"{'*' if info['backtrack'] else ' ':>2}  {text[:70]}")
    lines.append(f"  J_baseline={record.infos[0]['J_baseline']:.4f}  return={sum(record.rewards):+.4f}  "
                 f"process return={record.process_return:+.4f}")
    return "\n".join(lines)


def format_summary(records: list[EpisodeRecord]) -> str:
    rows = [f"{'episode':<24} {'steps':>5} {'return':>8} {'process':>8} {'correct':>7} {'backtracks':>10}"]
    for r in records:
        rows.append(f"{r.problem_id:<24} {len(r.segments):>5} {sum(r.rewards):>+8.4f} {r.process_return:>+8.4f} "
                    f"{str(r.correct):>7} {r.backtracks:>10}")
    rows.append(f"{'mean':<24} {np.mean([len(r.segments) for r in records]):>5.1f} "
                f"{np.mean([sum(r.rewards) for r in records]):>+8.4f} "
                f"{np.mean([r.process_return for r in records]):>+8.4f} "
                f"{np.mean([r.correct for r in records]):>7.2f} {np.mean([r.backtracks for r in records]):>10.2f}")
    return "\n".join(rows)


def rollout_main(args: argparse.Namespace) -> int:
    check(args.episodes >= 1, "--episodes", args.episodes, "an int >= 1")
    check(is_seed(args.seed) and is_seed(args.seed + args.episodes - 1), "--seed", args.seed, SEED_RANGE)
    env = gym.make(task_id(args.task), **({"scorer": {"model": args.scorer}} if args.scorer else {}))
    task = env.unwrapped.spec_task
    policy = reference_policy if args.policy == "reference" else model_policy(
        args.policy, task, temperature=args.temperature, max_new_tokens=task.limits.max_segment_tokens)
    records = []
    for episode in range(args.episodes):
        records.append(run_episode(env, policy, seed=args.seed + episode, options={"split": args.split}))
        print(format_episode(records[-1]), end="\n\n")
    print(format_summary(records))
    env.close()
    return 0


def task_id(task: str) -> str:
    """The gym id of ``task``: a registered repro-env id, or a task YAML (registered now)."""
    ids = registered_ids()
    if task in ids:
        return task
    if Path(task).suffix in (".yaml", ".yml"):
        return register_task(task)
    raise TaskSpecError(f"task must be a registered repro-env id or a task YAML file, got {describe(task)}."
                        f"{suggest(task, ids)} Registered: {', '.join(ids)}")


def demo_main(args: argparse.Namespace) -> int:
    """Scoring demo: a reference solution against the same solution with overthinking inserted."""
    from repro_env.arithmetic import overthink

    env = gym.make("RePro-Math-v0")
    rng = random.Random(0)
    for index in range(2 if args.quick else 4):
        options = {"split": "test", "index": index}
        solution = env.unwrapped.source.get("test", index).solution
        clean = run_episode(env, scripted_policy(solution), options=options)
        noisy_solution = overthink(solution, rng, rng.choice(["recheck", "false_start", "rumination"]), count=2)
        noisy = run_episode(env, scripted_policy(noisy_solution), options=options)
        print("reference solution\n" + format_episode(clean) + "\n")
        print("with overthinking\n" + format_episode(noisy) + "\n")
    env.close()
    return 0
