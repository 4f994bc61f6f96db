"""Running ``repro-env compare``'s runs: resumable, in this process or in workers, under one progress bar.

A job is one run directory ``OUT/runs/<name>``::

    train     agents.train.Trainer, checkpointing every ``checkpoint_every`` updates; a directory that
              holds a checkpoint (a killed run) is resumed from its latest one
    evaluate  test problems 0..N−1, greedy and ``eval_samples`` samples each, drawn with
              ``eval_seed(seed)``: the same for every method of that seed (paired)
    write     eval_episodes.jsonl (one row per episode: mode, problem, sample, then
              ``episode_metrics``), then result.json, each atomically; result.json marks the run done

A rerun skips the done runs, so a kill loses at most the current runs' updates since their last
checkpoint and their evaluation. The bar counts the remaining work in update-equivalents: a
training update is 1, an evaluation its episodes / (3 × rollouts per update), since collecting is
about a third of an update's time; finished runs and checkpointed updates are not counted, so the
ETA is that of the work left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from repro_env.agents.checkpoint import CHECKPOINTS, latest_checkpoint, write_atomic
from repro_env.agents.episodes import episode_metrics, summarize
from repro_env.agents.plots import is_curve_key
from repro_env.agents.run_config import LEARNERS, build_learner, parse_config
from repro_env.agents.train import Trainer
from repro_env.config import describe, read_yaml_file, to_dict
from repro_env.errors import ConfigError

CONFIG = "config.yaml"
RESULT = "result.json"
EPISODES = "eval_episodes.jsonl"
RESUMABLE_FIELDS = ("workers", "smooth", "checkpoint_every", "bootstrap_samples", "bootstrap_seed")
"""Compare fields that may change between a killed grid and its rerun (they leave the runs alone)."""
_ABSENT = object()


@dataclass(frozen=True)
class Job:
    """One run of the grid, or the starting model's evaluation (``trains`` false)."""

    name: str
    """Run name, also its directory under ``runs/``."""
    seed: int
    """Training seed; the evaluation's sampling seed is ``eval_seed(seed)``."""
    train: dict[str, Any]
    """The run's TrainConfig mapping (parsed by agents.run_config)."""
    trains: bool = True
    """False: evaluate the starting model only."""


def eval_seed(seed: int) -> int:
    """Sampling seed of the held-out evaluation of every run with training seed ``seed``."""
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])


# -- the output directory's config --------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """(field path, old, new) of the first place where two YAML-plain values differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where, old.get(key, _ABSENT), new.get(key, _ABSENT)
            found = first_difference(old[key], new[key], where)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new and type(old) is type(new) else (path, old, new)


def check_saved_config(out: Path, config: Any) -> None:
    """Write ``out/config.yaml``, or, when the directory holds a grid, check that it is this one."""
    path = out / CONFIG
    new = yaml.safe_load(yaml.safe_dump(_plain(to_dict(config)), sort_keys=False))
    if path.is_file():
        old = read_yaml_file(path)
        kept = [{k: v for k, v in c.items() if k not in RESUMABLE_FIELDS} for c in (old, new)]
        found = first_difference(*kept)
        if found:
            where, was, now = found
            shown = ["absent" if v is _ABSENT else describe(v, 200) for v in (was, now)]
            raise ConfigError(f"{path}: the output directory holds a grid with another config: field '{where}' "
                              f"was {shown[0]}, now {shown[1]}; rerun with the same config to resume it, or "
                              f"choose another --out")
    elif any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} holds files but no {CONFIG}, so it is not a compare grid to "
                          f"resume; choose an empty or new directory")
    head = "# Resolved config of this grid (written by repro-env compare); rerun into this directory to resume.\n"
    write_atomic(path, head + yaml.safe_dump(new, sort_keys=False, allow_unicode=True))


# -- one job (in this process or a worker) -------------------------------------------------------


class _GridTrainer(Trainer):
    """A ``repro-env train`` run that reports each finished update to the grid's progress bar."""

    def __init__(self, *args: Any, tick: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tick = tick

    def step(self) -> dict[str, Any]:
        row = super().step()
        self.tick(1)
        return row


def evaluation(learner: Any, problems: int, samples: int, sample_seed: int) -> tuple[list[dict], dict[str, float]]:
    """(per-episode rows, means): greedy and ``samples`` sampled episodes of each held-out problem."""
    rows: list[dict[str, Any]] = []
    means: dict[str, float] = {}
    for mode, greedy, n in (("greedy", True, 1), ("sampled", False, samples)):
        episodes = learner.evaluate_episodes(num_problems=problems, greedy=greedy, samples=n,
                                             sample_seed=sample_seed)
        means |= {f"{mode}_{k}": v for k, v in summarize(episodes).items()}
        rows += [{"mode": mode, "problem": i // n, "sample": i % n, **episode_metrics(e)}
                 for i, e in enumerate(episodes)]
    return rows, means


def run_job(job: Job, tick: Callable[[int], None], threads: int, eval_units: int) -> dict[str, Any]:
    """Train (or resume) and evaluate ``job``; write its files; return its result.json content."""
    import torch

    torch.set_num_threads(threads)
    config, learner_config = parse_config(job.train, source=job.name)
    run_dir = Path(job.train["out_dir"])
    t0 = time.perf_counter()
    if job.trains:
        trainer = _GridTrainer(config, learner_config, progress=False, plots=False, tick=tick)
        trainer.run(resume=latest_checkpoint(run_dir / CHECKPOINTS) is not None)
        learner, history = trainer.learner, trainer.metrics.rows
    else:
        learner, history = build_learner(config, learner_config), []
        run_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    sample_seed = eval_seed(job.seed)
    rows, means = evaluation(learner, config.eval_problems, config.eval_samples, sample_seed)
    write_atomic(run_dir / EPISODES, "".join(json.dumps(r) + "\n" for r in rows))
    result = {"name": job.name, "seed": job.seed, "algorithm": config.algorithm, "sample_seed": sample_seed,
              "train_seconds": sum(r.get("collect_seconds", 0) + r.get("update_seconds", 0) for r in history),
              "eval_seconds": time.perf_counter() - t1, "wall_seconds": time.perf_counter() - t0,
              "metrics": means, "history": [{k: v for k, v in r.items() if is_curve_key(k)} for r in history]}
    write_atomic(run_dir / RESULT, json.dumps(result))
    tick(eval_units)
    return result


# -- the grid ------------------------------------------------------------------------------------


def _units(job: Job) -> tuple[int, int]:
    """(training updates left, the evaluation's weight) of a job, in update-equivalents."""
    config, learner_config = parse_config(job.train, source=job.name)
    episodes = config.eval_problems * (1 + config.eval_samples)
    rollouts = getattr(learner_config, "rollouts_per_update", 1)
    left = 0
    if job.trains:
        latest = latest_checkpoint(Path(job.train["out_dir"]) / CHECKPOINTS)
        left = config.updates - (int(latest.name.rpartition("-")[2]) if latest is not None else 0)
    return max(left, 0), max(1, round(episodes / (3 * rollouts)))


def run_jobs(jobs: Sequence[Job], config: Any, out: Path, *, progress: bool) -> dict[str, dict[str, Any]]:
    """Run name → result of every job: done runs read from disk, the others run (or resumed)."""
    from tqdm import tqdm

    results = {j.name: json.loads((out / "runs" / j.name / RESULT).read_text(encoding="utf-8"))
               for j in jobs if (out / "runs" / j.name / RESULT).is_file()}
    todo = [j for j in jobs if j.name not in results]
    units = {j.name: _units(j) for j in todo}
    desc = f"compare: {len(todo)} of {len(jobs)} runs to do"
    bar = tqdm(total=sum(a + b for a, b in units.values()), unit="update", desc=desc, dynamic_ncols=True,
               disable=not progress, smoothing=0.05)
    try:
        if config.workers == 1 or len(todo) <= 1:
            for job in todo:
                results[job.name] = run_job(job, bar.update, config.threads, units[job.name][1])
        else:
            results |= _run_parallel(todo, config, bar, units)
    finally:
        bar.close()
    return {j.name: results[j.name] for j in jobs}


_WORKER: dict[str, Any] = {}  # a worker process's event queue, set by _init_worker


def worker_learners(config: Any) -> dict[str, Any]:
    """The grid's registered learners as objects: a spawned worker imports agents.run_config afresh, so
    names added with ``register_learner`` must be registered there again (they must be picklable)."""
    names = dict.fromkeys([*(m.algorithm for m in config.methods.values()), config.ablation.algorithm])
    return {name: LEARNERS.get(name) for name in names if ":" not in name}


def _die_with_parent() -> None:
    """A worker must not outlive a killed grid: it would hold its run's lock while the rerun resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _init_worker(threads: int, learners: Mapping[str, Any], events: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _die_with_parent()
    _WORKER["events"] = events
    for name, target in learners.items():
        LEARNERS.register(name, target, replace=True)


def _queue_tick(units: int) -> None:
    _WORKER["events"].put(units)


def _run_parallel(jobs: Sequence[Job], config: Any, bar: Any,
                  units: Mapping[str, tuple[int, int]]) -> dict[str, dict[str, Any]]:
    import multiprocessing as mp
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("spawn")  # no fork of a process whose OpenMP pool is running
    events = context.Queue()  # given at start-up (inherited), so no manager process outlives a kill
    with ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker,
                             initargs=(config.threads, worker_learners(config), events)) as pool:
        futures = {j.name: pool.submit(run_job, j, _queue_tick, config.threads, units[j.name][1]) for j in jobs}
        try:
            while not all(f.done() for f in futures.values()):
                try:
                    bar.update(events.get(timeout=0.5))
                except queue_module.Empty:
                    pass
        except BaseException:  # Ctrl-C: the running runs checkpoint and stop, the queued ones never start
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        while True:  # ticks sent just before the last run finished
            try:
                bar.update(events.get_nowait())
            except queue_module.Empty:
                break
        return {name: f.result() for name, f in futures.items()}
