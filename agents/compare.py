"""``repro-env compare``: does RePro help? Every listed learner, each with and without the process reward.

The experiment of REPRO_SPEC §6 in miniature. From one starting model, every method trains with the
same budget for each seed, then is evaluated on the task's held-out split::

    methods  = {L, L + RePro  for L in algorithms}         (process_reward false / true; GRPO, PPO by default)
    budget   = updates × rollouts per update, equal for every learner (checked when the config loads)
    runs     = methods × seeds                              each one ``repro-env train`` run (agents.train)
    eval     = greedy accuracy and avg@n at temperature 1.0, tokens and backtrack segments per
               response, process return S_T (scored by the model itself, as in training)
    table    = mean ± std over seeds (sample std, ddof = 1), the starting model's row, RePro vs baseline

A learner is any name of the learner registry (``repro_env.agents.train.register_learner``, or a plugin's
``repro_env.learners`` entry point) or a ``'package.module:Class'`` path. Its class's ``label``
names its rows, its config's ``rollouts_per_update`` is its budget, and its config fields go under
``learners: {NAME: {...}}`` (the top-level ``grpo:`` / ``ppo:`` sections of older configs still load).

``--ablation`` adds one-factor-at-a-time runs of ``ablation.algorithm`` + RePro (GRPO by default) on
one seed around the task's defaults: stability weight w, point selection (all vs top-k by
first-token entropy) and α. The default variant is the main grid's run of that learner and seed when
the grid has it (runs are deterministic), so it is not trained twice.

Output directory (``--out``, default ``runs/compare-<YYYYmmdd-HHMMSS>``)::

    results.md  results.json  ablation.md (with --ablation)
    plots/accuracy.png  plots/tokens.png  plots/backtracks.png    training rollouts, mean over seeds
    runs/<method>-seed<k>/   each run's directory (config, metrics, final checkpoint)

With ``workers: 2`` the runs go to two processes of ``threads`` torch threads each; one tqdm bar
counts updates and evaluations over the whole grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_env.agents.report import (
    REPRO,
    ablation_table,
    aggregate,
    comparison_table,
    comparisons,
    plot_curves,
    results_table,
)
from repro_env.agents.train import LEARNERS, Trainer, apply_sets, build_learner, learner_spec, parse_config
from repro_env.config import check, from_mapping, read_yaml_file
from repro_env.errors import ConfigError, ReproEnvError, ScorerError, TrainingError

ALIASES = ("grpo", "ppo")
"""Top-level learner sections of configs written before ``learners:`` (``grpo: {...}``)."""


@dataclass(frozen=True)
class AblationConfig:
    """One learner + RePro, one factor at a time around the task's defaults, on one seed."""

    algorithm: str = "grpo"
    """Learner of every ablation run (a name of ``algorithms`` or any registered learner)."""
    seed: int = 0
    """Seed of every ablation run."""
    stability_weight: tuple[float, ...] = (0.0, 0.1, 0.5)
    """Values of w (task ``reward.stability_weight``)."""
    k: tuple[int | str, ...] = ("all", 3)
    """Point selection: ``all`` or a number k (top-k segments by first-token entropy, plus the last)."""
    alpha: tuple[float, ...] = (0.05, 0.1, 0.2)
    """Values of α (learner ``alpha``)."""

    def __post_init__(self) -> None:
        LEARNERS.check(self.algorithm, "algorithm")
        check(all(0 <= w <= 1 for w in self.stability_weight), "stability_weight", self.stability_weight,
              "a list of numbers in [0, 1]")
        check(all(k == "all" or (isinstance(k, int) and k >= 1) for k in self.k), "k", self.k,
              "a list of 'all' or ints >= 1")
        check(all(a >= 0 for a in self.alpha), "alpha", self.alpha, "a list of numbers >= 0")


@dataclass(frozen=True)
class CompareConfig:
    """The grid: task, starting model, budget, learners, evaluation and how the runs are spread."""

    task: str = "RePro-Math-v0"
    """Gym id or task YAML of every run."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """TaskSpec overrides of every run (the ablation adds its own on top)."""
    model: str = "bundled"
    """Starting model of every run: the policy and the scorer that computes J."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every method."""
    updates: int = 40
    """Updates of every run; with the rollouts per update that every learner shares, the budget."""
    eval_problems: int = 100
    """Held-out problems of the final evaluation (test split, problems 0..N−1)."""
    eval_samples: int = 4
    """n of avg@n at temperature 1.0."""
    algorithms: tuple[str, ...] = ("grpo", "ppo")
    """Learners to compare (registered names or 'package.module:Class'), each with and without RePro;
    the position in this list picks the plot colour."""
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Learner name → its config fields (``model`` and ``process_reward`` are set per run); a learner
    without a section runs with its config's defaults. Top-level ``grpo:`` / ``ppo:`` sections are
    the old spelling of ``learners: {grpo: ..., ppo: ...}``."""
    ablation: AblationConfig = field(default_factory=AblationConfig)
    """The ``--ablation`` runs."""
    workers: int = 1
    """Processes training runs in parallel (1: in this process)."""
    threads: int = 1
    """torch threads of each worker."""
    smooth: int = 5
    """Plots: rolling mean over this many updates."""

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds,
              "a non-empty list of distinct ints")
        check(self.updates >= 1, "updates", self.updates, "an int >= 1")
        check(self.eval_problems >= 1, "eval_problems", self.eval_problems, "an int >= 1")
        check(self.eval_samples >= 2, "eval_samples", self.eval_samples, "an int >= 2 (avg@n at T=1)")
        check(len(self.algorithms) >= 1 and len(set(self.algorithms)) == len(self.algorithms), "algorithms",
              self.algorithms, "a non-empty list of distinct learner names")
        for i, name in enumerate(self.algorithms):
            LEARNERS.check(name, f"algorithms[{i}]")
        for name, section in self.learners.items():
            LEARNERS.check(name, f"learners.{name}")
            check(isinstance(section, Mapping), f"learners.{name}", section,
                  f"a mapping of {name}'s config fields")
        for name in ("workers", "threads", "smooth"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")

    @classmethod
    def normalise_mapping(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Fold the old top-level ``grpo:`` / ``ppo:`` sections into ``learners``.

        Both spellings may be given (e.g. ``--set learners.grpo.lr=…`` on an old config) when they
        set different fields; the same field in both is an error, since neither clearly wins.
        """
        data = dict(data)
        learners = data.get("learners", {})
        if not isinstance(learners, Mapping):
            return data  # from_mapping reports the type
        learners = dict(learners)
        for alias in [a for a in ALIASES if a in data]:
            old, new = data.pop(alias), learners.get(alias, {})
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                both = sorted(set(old) & set(new))
                if both:
                    raise ConfigError(f"field '{alias}.{both[0]}' is also set as 'learners.{alias}.{both[0]}'; "
                                      f"'{alias}:' is the old spelling of 'learners: {{{alias}: ...}}', keep one")
                learners[alias] = {**old, **new}
            else:  # __post_init__ names the section that is not a mapping
                learners[alias] = new if isinstance(old, Mapping) else old
        data["learners"] = learners
        return data


@dataclass(frozen=True)
class Job:
    """One run of the grid (or the starting model's evaluation when ``train`` is None)."""

    name: str
    """Run name, also its directory under ``runs/``."""
    method: str
    """Table row, e.g. ``GRPO + RePro``."""
    seed: int
    train: dict[str, Any] | None
    """The run's TrainConfig mapping (parsed by agents.train)."""
    variant: str = ""
    """Ablation variant, e.g. ``w=0.5`` (empty for the main grid)."""
    algorithm: str = ""
    """The learner's name (``grpo``)."""
    repro: bool = False
    """Whether the process reward is on."""


# -- the grid ---------------------------------------------------------------------------------


def method_name(algorithm: str, repro: bool) -> str:
    """Table row of a learner's runs: its class's ``label``, plus `` + RePro`` with the process reward."""
    return learner_spec(algorithm).label + (REPRO if repro else "")


def run_name(algorithm: str, repro: bool, seed: int) -> str:
    """``grpo-repro-seed0``; a ``package.module:Class`` name is made safe for a directory."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", algorithm)
    return f"{stem}{'-repro' if repro else ''}-seed{seed}"


def train_mapping(config: CompareConfig, out: Path, algorithm: str, *, seed: int, repro: bool,
                  name: str, learner: Mapping[str, Any] = (), reward: Mapping[str, Any] = ()) -> dict[str, Any]:
    """The TrainConfig mapping of one run: no periodic evaluation, one final checkpoint."""
    overrides = json.loads(json.dumps(config.task_overrides))  # a deep copy
    overrides.setdefault("scorer", {})["model"] = config.model
    if reward:
        overrides.setdefault("reward", {}).update(reward)
    return {"algorithm": algorithm, "task": config.task, "task_overrides": overrides,
            "updates": config.updates, "eval_every": 0, "eval_problems": config.eval_problems,
            "eval_samples": config.eval_samples, "checkpoint_every": config.updates, "keep_checkpoints": 1,
            "seed": seed, "out_dir": str(out / "runs" / name),
            "learner": {**config.learners.get(algorithm, {}), **dict(learner), "model": config.model,
                        "process_reward": repro}}


def main_jobs(config: CompareConfig, out: Path) -> list[Job]:
    """The starting model's evaluation, then algorithm × {baseline, RePro} × seeds."""
    first = config.algorithms[0]
    start = train_mapping(config, out, first, seed=config.seeds[0], repro=False, name="start")
    jobs = [Job("start", "starting model", config.seeds[0], None, variant=json.dumps(start), algorithm=first)]
    for algorithm in config.algorithms:
        for repro in (False, True):
            for seed in config.seeds:
                name = run_name(algorithm, repro, seed)
                jobs.append(Job(name, method_name(algorithm, repro), seed,
                                train_mapping(config, out, algorithm, seed=seed, repro=repro, name=name),
                                algorithm=algorithm, repro=repro))
    return jobs


def ablation_jobs(config: CompareConfig, out: Path, defaults: tuple[float, float]) -> list[Job]:
    """``ablation.algorithm`` + RePro with one of w, k, α changed from ``defaults`` = (w, α); the default run too."""
    w0, alpha0 = defaults
    algorithm, seed = config.ablation.algorithm, config.ablation.seed
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("default", {}, {})]
    variants += [(f"w={w:g}", {}, {"stability_weight": w}) for w in config.ablation.stability_weight if w != w0]
    variants += [(f"k={k}", {}, {"selection": "topk_entropy", "k": k}) for k in config.ablation.k if k != "all"]
    variants += [(f"alpha={a:g}", {"alpha": a}, {}) for a in config.ablation.alpha if a != alpha0]
    jobs = []
    for variant, learner, reward in variants:
        name = f"ablation-{variant.replace('=', '')}-seed{seed}"
        mapping = train_mapping(config, out, algorithm, seed=seed, repro=True, name=name, learner=learner,
                                reward=reward)
        jobs.append(Job(name, method_name(algorithm, True), seed, mapping, variant=variant,
                        algorithm=algorithm, repro=True))
    return jobs


def task_defaults(config: CompareConfig) -> tuple[float, float]:
    """(w, α) of the ablation's runs: the task's reward section unless the learner's section sets α."""
    from repro_env.tasks import resolve_task

    reward = resolve_task(config.task, config.task_overrides).reward
    alpha = config.learners.get(config.ablation.algorithm, {}).get("alpha")
    return reward.stability_weight, reward.alpha if alpha is None else float(alpha)


def check_learners(config: CompareConfig, source: str) -> None:
    """Parse every run's learner section and task (no model is loaded); the learners must have
    distinct labels and collect the same rollouts per update, so that their budgets are equal."""
    budgets: dict[str, int] = {}
    owners: dict[str, str] = {}  # label → learner
    for i, algorithm in enumerate(config.algorithms):
        try:
            label = learner_spec(algorithm, f"algorithms[{i}]").label
        except ConfigError as e:
            raise type(e)(f"{source}: {e}") from e
        if label in owners:
            raise ConfigError(f"{source}: field 'algorithms': {owners[label]!r} and {algorithm!r} share the "
                              f"label {label!r}, so their table rows would merge; give one class its own 'label'")
        owners[label] = algorithm
        configs = [parse_config(train_mapping(config, Path("runs"), algorithm, seed=0, repro=repro, name="check"),
                                source=f"{source} ({algorithm})")[1] for repro in (False, True)]
        budget = getattr(configs[0], "rollouts_per_update", None)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"{source}: learner {algorithm!r}: {type(configs[0]).__name__}.rollouts_per_update "
                              f"must be an int >= 1 (episodes per collect, the budget that repro-env compare "
                              f"holds equal), got {budget!r}; give the config that property")
        budgets[algorithm] = budget
    if len(set(budgets.values())) > 1:
        got = ", ".join(f"{n} for {a!r}" for a, n in budgets.items())
        raise ConfigError(f"{source}: field 'learners': every learner must collect the same rollouts per update "
                          f"(the compared budget; each config's rollouts_per_update), got {got}; change the "
                          f"learners' sections so that they match")


# -- one job (in this process or a worker) -------------------------------------------------------


class _GridTrainer(Trainer):
    """A ``repro-env train`` run that reports each finished update to the grid's progress bar."""

    def __init__(self, *args: Any, tick: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tick = tick

    def step(self) -> dict[str, Any]:
        row = super().step()
        self.tick("update")
        return row


def _evaluation(learner: Any, problems: int, samples: int) -> dict[str, float]:
    greedy = learner.evaluate(num_problems=problems, greedy=True)
    sampled = learner.evaluate(num_problems=problems, greedy=False, samples=samples)
    return {f"greedy_{k}": v for k, v in greedy.items()} | {f"sampled_{k}": v for k, v in sampled.items()}


def run_job(job: Job, tick: Callable[[str], None], threads: int) -> dict[str, Any]:
    """Train (unless it is the starting model's job) and evaluate; returns the job's results row."""
    import torch

    torch.set_num_threads(threads)
    data = job.train if job.train is not None else json.loads(job.variant)
    config, learner_config = parse_config(data, source=job.name)
    t0 = time.perf_counter()
    if job.train is None:
        learner, history = build_learner(config, learner_config), []
    else:
        trainer = _GridTrainer(config, learner_config, progress=False, plots=False, tick=tick)
        trainer.run()
        learner, history = trainer.learner, trainer.metrics.rows
    train_seconds = time.perf_counter() - t0
    metrics = _evaluation(learner, config.eval_problems, config.eval_samples)
    tick("eval")
    keep = ("update", "accuracy", "tokens_per_response", "backtracks_per_response", "process_return")
    return {"name": job.name, "method": job.method, "algorithm": job.algorithm, "repro": job.repro,
            "seed": job.seed, "variant": job.variant if job.train is not None else "",
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - t0 - train_seconds, "metrics": metrics,
            "history": [{k: row[k] for k in keep if k in row} for row in history]}


class _QueueTick:
    """A picklable ``tick`` for worker processes: puts the event on a manager queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, event: str) -> None:
        self.queue.put(event)


def worker_learners(config: CompareConfig) -> dict[str, Any]:
    """The grid's registered learners as objects: a spawned worker imports agents.train afresh, so
    names added with ``register_learner`` must be registered there again (they must be picklable)."""
    names = dict.fromkeys([*config.algorithms, config.ablation.algorithm])
    return {name: LEARNERS.get(name) for name in names if ":" not in name}


def _init_worker(threads: int, learners: Mapping[str, Any]) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for name, target in learners.items():
        LEARNERS.register(name, target, replace=True)


def run_jobs(jobs: Sequence[Job], config: CompareConfig, *, progress: bool) -> list[dict[str, Any]]:
    """Every job, in order of ``jobs`` in the result; one tqdm bar over all updates and evaluations."""
    from tqdm import tqdm

    total = sum(config.updates if j.train is not None else 0 for j in jobs) + len(jobs)
    bar = tqdm(total=total, unit="step", desc="compare", dynamic_ncols=True, disable=not progress,
               smoothing=0.05)
    try:
        if config.workers == 1:
            return [run_job(job, lambda _e: bar.update(1), config.threads) for job in jobs]
        return _run_parallel(jobs, config, bar)
    finally:
        bar.close()


def _run_parallel(jobs: Sequence[Job], config: CompareConfig, bar: Any) -> list[dict[str, Any]]:
    import multiprocessing as mp
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("spawn")  # no fork of a process whose OpenMP pool is running
    with context.Manager() as manager, ProcessPoolExecutor(
            config.workers, mp_context=context, initializer=_init_worker,
            initargs=(config.threads, worker_learners(config))) as pool:
        events = manager.Queue()
        futures = [pool.submit(run_job, job, _QueueTick(events), config.threads) for job in jobs]
        while not all(f.done() for f in futures):
            try:
                events.get(timeout=0.5)
                bar.update(1)
            except queue_module.Empty:
                pass
        return [f.result() for f in futures]


# -- command line -----------------------------------------------------------------------------------


def load_compare_config(path: str | Path, sets: Sequence[str] = ()) -> CompareConfig:
    """Read a compare YAML, apply ``--set`` overrides and validate (learner sections included)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of CompareConfig fields, got {data!r}")
    config = from_mapping(CompareConfig, apply_sets(data, sets), source=str(path))
    check_learners(config, str(path))  # the learner sections, budgets and task, before any run
    return config


def write_results(out: Path, config: CompareConfig, results: list[dict[str, Any]],
                  ablation: list[dict[str, Any]], seconds: float, command: str) -> str:
    """results.md / results.json / ablation.md / plots; returns results.md's text."""
    start = next(r for r in results if r["name"] == "start")
    grid = [r for r in results if r["name"] != "start"]
    stats = aggregate(grid)
    versus = comparisons(stats)
    plot_curves(grid, out, config.smooth)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    text = "\n".join([
        "# RePro vs outcome-only", "",
        f"Command: `{command}`  ", f"Machine: {machine}; workers {config.workers} × {config.threads} "
        f"torch thread(s)  ", f"Run time: {seconds / 60:.1f} min (training + evaluation of every run)", "",
        f"{len(config.seeds)} seed(s) per method, {config.updates} updates each; held-out: "
        f"{config.eval_problems} test problems, greedy and {config.eval_samples} samples at T=1.0. "
        "mean ± sample std over seeds.", "",
        results_table(start["metrics"], stats, len(config.seeds), config.eval_samples), "",
        "## RePro vs baseline", "", comparison_table(versus), "",
        "Curves: plots/accuracy.png, plots/tokens.png, plots/backtracks.png (training rollouts).", ""])
    (out / "results.md").write_text(text, encoding="utf-8")
    if ablation:
        head = (f"# Ablation: {method_name(config.ablation.algorithm, True)}, seed {config.ablation.seed}, "
                f"{config.updates} updates, "
                "one factor changed from the default\n\n")
        (out / "ablation.md").write_text(head + ablation_table(ablation) + "\n", encoding="utf-8")
    payload = {"config": dataclasses.asdict(config), "seconds": seconds, "command": command,
               "machine": machine, "starting_model": start, "runs": grid, "ablation": ablation,
               "summary": {m: {k: list(v) for k, v in s.items()} for m, s in stats.items()},
               "comparisons": versus}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float), encoding="utf-8")
    return text


def compare(config: CompareConfig, out: Path, *, ablation: bool = False, progress: bool = True,
            command: str = "repro-env compare") -> Path:
    """Check every run's config, run the grid (and the ablation), write the results into ``out``."""
    check_learners(config, "compare config")
    jobs = main_jobs(config, out)
    extra: list[Job] = []
    reuse = ablation and config.ablation.seed in config.seeds and config.ablation.algorithm in config.algorithms
    if ablation:
        extra = ablation_jobs(config, out, task_defaults(config))
        for job in extra:  # e.g. an α variant of a learner whose config has no ``alpha``
            parse_config(job.train, source=f"ablation ({job.variant})")
        if reuse:  # the default variant is the grid's run of that learner + RePro and seed
            extra = extra[1:]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run_jobs(jobs + extra, config, progress=progress)
    seconds = time.perf_counter() - t0
    main_results, ablation_results = results[:len(jobs)], results[len(jobs):]
    if reuse:
        default = next(r for r in main_results
                       if r["name"] == run_name(config.ablation.algorithm, True, config.ablation.seed))
        ablation_results.insert(0, {**default, "variant": "default"})
    write_results(out, config, main_results, ablation_results, seconds, command)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``repro-env compare CONFIG [--ablation] [--out DIR] [--set k=v ...]``; exit 0, 1 (a run failed)."""
    parser = argparse.ArgumentParser(prog="repro-env compare", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="compare config YAML (configs/compare_tiny.yaml)")
    parser.add_argument("--ablation", action="store_true", help="also run the w / k / α ablation")
    parser.add_argument("--out", help="output directory (default runs/compare-<timestamp>)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted for nesting: --set learners.grpo.lr=3e-4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_compare_config(args.config, args.sets)
        out = Path(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
        command = "repro-env compare " + " ".join(sys.argv[2:] if argv is None else argv)
        compare(config, out, ablation=args.ablation, progress=not args.no_progress, command=command.strip())
    except (TrainingError, ScorerError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except ReproEnvError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8"))
    if args.ablation:
        print((out / "ablation.md").read_text(encoding="utf-8"))
    print(f"Output directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
