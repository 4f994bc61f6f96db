"""``repro-env compare``: does RePro help? GRPO and PPO, each with and without the process reward.

The experiment of REPRO_SPEC §6 in miniature. From one starting model, every method trains with the
same budget for each seed, then is evaluated on the task's held-out split::

    methods  = {GRPO, GRPO + RePro, PPO, PPO + RePro}      (process_reward false / true)
    runs     = methods × seeds                              each one ``repro-env train`` run (agents.train)
    eval     = greedy accuracy and avg@n at temperature 1.0, tokens and backtrack segments per
               response, process return S_T (scored by the model itself, as in training)
    table    = mean ± std over seeds (sample std, ddof = 1), the starting model's row, RePro vs baseline

``--ablation`` adds one-factor-at-a-time GRPO + RePro runs on one seed around the task's defaults:
stability weight w, point selection (all vs top-k by first-token entropy) and α. The default
variant is the main grid's GRPO + RePro run of that seed when the grid has it (runs are
deterministic), so it is not trained twice.

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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.train import Trainer, apply_sets, build_learner, parse_config
from repro_env.config import check, from_mapping, load_yaml
from repro_env.errors import ConfigError, ReproEnvError, ScorerError, TrainingError

ALGORITHMS = ("grpo", "ppo")
LABELS = {"grpo": "GRPO", "ppo": "PPO"}
# (results.json key, column title); ``sampled_*`` are the avg@n episodes at temperature 1.0
COLUMNS = (
    ("greedy_accuracy", "accuracy (greedy)"),
    ("sampled_accuracy", "avg@n (T=1)"),
    ("sampled_tokens_per_response", "tokens/response (T=1)"),
    ("greedy_tokens_per_response", "tokens/response (greedy)"),
    ("sampled_backtracks_per_response", "backtracks/response (T=1)"),
    ("greedy_backtracks_per_response", "backtracks/response (greedy)"),
    ("sampled_process_return", "process return (T=1)"),
)
TARGETS = {"tokens": -0.15, "backtracks": -0.30}
"""Relative changes RePro vs baseline that the issue aims for (measured, never asserted)."""


@dataclass(frozen=True)
class AblationConfig:
    """GRPO + RePro one factor at a time around the task's defaults, on one seed."""

    seed: int = 0
    """Seed of every ablation run."""
    stability_weight: tuple[float, ...] = (0.0, 0.1, 0.5)
    """Values of w (task ``reward.stability_weight``)."""
    k: tuple[int | str, ...] = ("all", 3)
    """Point selection: ``all`` or a number k (top-k segments by first-token entropy, plus the last)."""
    alpha: tuple[float, ...] = (0.05, 0.1, 0.2)
    """Values of α (learner ``alpha``)."""

    def __post_init__(self) -> None:
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
    """Updates of every run (the same budget: GRPO's P·G rollouts equal PPO's episodes per update)."""
    eval_problems: int = 100
    """Held-out problems of the final evaluation (test split, problems 0..N−1)."""
    eval_samples: int = 4
    """n of avg@n at temperature 1.0."""
    algorithms: tuple[str, ...] = ALGORITHMS
    """Which algorithms to run; each runs with and without RePro."""
    grpo: dict[str, Any] = field(default_factory=dict)
    """GRPOConfig fields of the GRPO runs (``model`` and ``process_reward`` are set per run)."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """PPOConfig fields of the PPO runs."""
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
        check(len(self.algorithms) >= 1 and set(self.algorithms) <= set(ALGORITHMS), "algorithms",
              self.algorithms, f"a non-empty subset of {list(ALGORITHMS)}")
        for name in ("workers", "threads", "smooth"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")


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


# -- the grid ---------------------------------------------------------------------------------


def method_name(algorithm: str, repro: bool) -> str:
    return LABELS[algorithm] + (" + RePro" if repro else "")


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
            "learner": {**getattr(config, algorithm), **dict(learner), "model": config.model,
                        "process_reward": repro}}


def main_jobs(config: CompareConfig, out: Path) -> list[Job]:
    """The starting model's evaluation, then algorithm × {baseline, RePro} × seeds."""
    first = config.algorithms[0]
    start = train_mapping(config, out, first, seed=config.seeds[0], repro=False, name="start")
    jobs = [Job("start", "starting model", config.seeds[0], None, variant=json.dumps(start))]
    for algorithm in config.algorithms:
        for repro in (False, True):
            for seed in config.seeds:
                name = f"{algorithm}{'-repro' if repro else ''}-seed{seed}"
                jobs.append(Job(name, method_name(algorithm, repro), seed,
                                train_mapping(config, out, algorithm, seed=seed, repro=repro, name=name)))
    return jobs


def ablation_jobs(config: CompareConfig, out: Path, defaults: tuple[float, float]) -> list[Job]:
    """GRPO + RePro with one of w, k, α changed from ``defaults`` = (w, α); the default run too."""
    w0, alpha0 = defaults
    seed = config.ablation.seed
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("default", {}, {})]
    variants += [(f"w={w:g}", {}, {"stability_weight": w}) for w in config.ablation.stability_weight if w != w0]
    variants += [(f"k={k}", {}, {"selection": "topk_entropy", "k": k}) for k in config.ablation.k if k != "all"]
    variants += [(f"alpha={a:g}", {"alpha": a}, {}) for a in config.ablation.alpha if a != alpha0]
    jobs = []
    for variant, learner, reward in variants:
        name = f"ablation-{variant.replace('=', '')}-seed{seed}"
        mapping = train_mapping(config, out, "grpo", seed=seed, repro=True, name=name, learner=learner,
                                reward=reward)
        jobs.append(Job(name, "GRPO + RePro", seed, mapping, variant=variant))
    return jobs


def task_defaults(config: CompareConfig) -> tuple[float, float]:
    """(w, α) of the GRPO + RePro runs: the task's reward section unless the learner sets α."""
    from repro_env.tasks import resolve_task

    reward = resolve_task(config.task, config.task_overrides).reward
    alpha = config.grpo.get("alpha")
    return reward.stability_weight, reward.alpha if alpha is None else float(alpha)


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
    return {"name": job.name, "method": job.method, "seed": job.seed, "variant": job.variant
            if job.train is not None else "", "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - t0 - train_seconds, "metrics": metrics,
            "history": [{k: row[k] for k in keep if k in row} for row in history]}


class _QueueTick:
    """A picklable ``tick`` for worker processes: puts the event on a manager queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, event: str) -> None:
        self.queue.put(event)


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)


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
            config.workers, mp_context=context, initializer=_init_worker, initargs=(config.threads,)) as pool:
        events = manager.Queue()
        futures = [pool.submit(run_job, job, _QueueTick(events), config.threads) for job in jobs]
        while not all(f.done() for f in futures):
            try:
                events.get(timeout=0.5)
                bar.update(1)
            except queue_module.Empty:
                pass
        return [f.result() for f in futures]


# -- tables and plots -----------------------------------------------------------------------------


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """method → metric → (mean, sample std over seeds; 0 with one seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r["metrics"] for r in rows if r["method"] == method]
        out[method] = {}
        for key, _ in COLUMNS:
            values = np.array([m[key] for m in runs], dtype=np.float64)  # (seeds,)
            std = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[method][key] = (float(values.mean()), std)
    return out


def _cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def comparisons(stats: Mapping[str, Mapping[str, tuple[float, float]]]) -> list[dict[str, Any]]:
    """RePro vs baseline per algorithm: accuracy difference and relative token/backtrack changes.

    Accuracy meets its target when RePro's mean >= the baseline's mean − one std (the larger of the
    two methods' seed stds); tokens and backtracks use the T=1 episodes (4× the greedy sample).
    """
    out = []
    for algorithm in ALGORITHMS:
        base, repro = stats.get(method_name(algorithm, False)), stats.get(method_name(algorithm, True))
        if base is None or repro is None:
            continue
        row: dict[str, Any] = {"algorithm": LABELS[algorithm]}
        for key in ("greedy_accuracy", "sampled_accuracy"):
            tolerance = max(base[key][1], repro[key][1])
            row[key] = {"change": repro[key][0] - base[key][0], "tolerance": tolerance,
                        "met": repro[key][0] >= base[key][0] - tolerance}
        for name, key in (("tokens", "sampled_tokens_per_response"),
                          ("backtracks", "sampled_backtracks_per_response")):
            b, r = base[key][0], repro[key][0]
            change = (r - b) / b if b > 0 else float("nan")
            row[name] = {"baseline": b, "repro": r, "change": change, "target": TARGETS[name],
                         "met": bool(change <= TARGETS[name])}
        out.append(row)
    return out


def results_table(start: Mapping[str, Any], stats: Mapping[str, Mapping[str, tuple[float, float]]],
                  seeds: int, samples: int) -> str:
    """The Markdown results table: one row per method plus the starting model."""
    titles = [title.replace("avg@n", f"avg@{samples}") for _, title in COLUMNS]
    lines = ["| method | " + " | ".join(titles) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines.append("| starting model | " + " | ".join(f"{start[k]:.3f}" for k, _ in COLUMNS) + " |")
    for method, values in stats.items():
        lines.append(f"| {method} | " + " | ".join(_cell(*values[k], seeds) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """RePro vs baseline against the issue's targets."""
    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines = ["| algorithm | Δ accuracy greedy (target ≥ −1 std) | Δ avg@n | tokens (target ≤ −15%) "
             "| backtracks (target ≤ −30%) |", "|---|---|---|---|---|"]
    for r in rows:
        acc = [f"{r[k]['change']:+.3f} (std {r[k]['tolerance']:.3f}; {mark(r[k]['met'])})"
               for k in ("greedy_accuracy", "sampled_accuracy")]
        rel = [f"{r[k]['baseline']:.2f} → {r[k]['repro']:.2f} ({_percent(r[k]['change'])}; {mark(r[k]['met'])})"
               for k in ("tokens", "backtracks")]
        lines.append(f"| {r['algorithm']} | " + " | ".join(acc + rel) + " |")
    return "\n".join(lines)


def _percent(change: float) -> str:
    return f"{change:+.1%}" if np.isfinite(change) else "n/a: baseline 0"


def ablation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per ablation variant (one seed each)."""
    keys = [k for k, _ in COLUMNS]
    lines = ["| variant | " + " | ".join(t for _, t in COLUMNS) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r['metrics'][k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def plot_curves(rows: Sequence[Mapping[str, Any]], out: Path, smooth: int) -> list[Path]:
    """plots/{accuracy,tokens,backtracks}.png: training rollouts per update, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {"accuracy": ("accuracy", "Training accuracy (rollouts at T=1)"),
               "tokens": ("tokens_per_response", "Tokens per response (training rollouts)"),
               "backtracks": ("backtracks_per_response", "Backtracks per response (training rollouts)")}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (key, title) in figures.items():
        fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
        fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
        for method in dict.fromkeys(r["method"] for r in rows):
            curves = [[h[key] for h in r["history"]] for r in rows if r["method"] == method]
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)  # (n,)
            window = min(smooth, n)
            smoothed = np.convolve(mean, np.ones(window) / window, mode="valid")  # (n − window + 1,)
            colour = f"C{ALGORITHMS.index(method.split()[0].lower())}"  # one colour per algorithm
            ax.plot(np.arange(window, n + 1), smoothed, label=method, color=colour,
                    linestyle="-" if "RePro" in method else "--")
        ax.set(title=title, xlabel=f"update (rolling mean over {smooth})", ylabel=key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / "plots" / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# -- command line -----------------------------------------------------------------------------------


def load_compare_config(path: str | Path, sets: Sequence[str] = ()) -> CompareConfig:
    """Read a compare YAML, apply ``--set`` overrides and validate (learner sections included)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = load_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of CompareConfig fields, got {data!r}")
    config = from_mapping(CompareConfig, apply_sets(data, sets), source=str(path))
    for algorithm in config.algorithms:
        for repro in (False, True):  # the learner sections and the task are checked before any run
            mapping = train_mapping(config, Path("runs"), algorithm, seed=0, repro=repro, name="check")
            parse_config(mapping, source=f"{path} ({algorithm})")
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
        head = (f"# Ablation: GRPO + RePro, seed {config.ablation.seed}, {config.updates} updates, "
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
    """Run the grid (and the ablation), write the results into ``out``; return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = main_jobs(config, out)
    extra: list[Job] = []
    if ablation:
        extra = ablation_jobs(config, out, task_defaults(config))
        reuse = config.ablation.seed in config.seeds and "grpo" in config.algorithms
        if reuse:  # the default variant is the grid's GRPO + RePro run of that seed
            extra = extra[1:]
    t0 = time.perf_counter()
    results = run_jobs(jobs + extra, config, progress=progress)
    seconds = time.perf_counter() - t0
    main_results, ablation_results = results[:len(jobs)], results[len(jobs):]
    if ablation and reuse:
        default = next(r for r in main_results
                       if r["name"] == f"grpo-repro-seed{config.ablation.seed}")
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
                        help="override a config field, dotted for nesting: --set grpo.lr=3e-4")
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
