"""``repro-env compare``: does RePro help? Named methods × paired seeds, resumable, with 95% intervals.

The experiment of REPRO_SPEC §6 in miniature. From one starting model, every method trains with the
same budget on each of its seeds, then is evaluated on the task's held-out split::

    methods  = the config's ``methods:``, an ordered mapping row name → {algorithm, process_reward,
               learner overrides, task_overrides, seeds, baseline}; older configs' ``algorithms:``
               list expands to L and L + RePro for each learner L, and ``--ablation`` adds the
               ``ablation:`` section's one-seed rows of L + RePro (w, k, α changed one at a time)
    budget   = updates × rollouts per update, equal for every method (checked when the config loads)
    runs     = methods × seeds                each a ``repro-env train`` run (agents.train); two cells
                                              with the same run config share one run
    eval     = test problems 0..eval_problems−1, greedy and eval_samples samples each at the learner's
               temperature (1.0 by default), with a sampling seed that depends on the seed only, so
               every method is paired; per-episode rows of ``agents.episodes.episode_metrics``
    table    = mean [95% CI] per metric, bootstrap over seeds and problems (agents.bootstrap), and the
               paired difference of each method to its baseline, also relative in %

A method's ``baseline`` defaults to the row of the same algorithm with the process reward off and no
overrides; a method that is that row, or has none, gets no paired row. A learner is any name of the
learner registry (``repro_env.agents.run_config.register_learner``, or a plugin's ``repro_env.learners``
entry point) or a ``'package.module:Class'`` path; its config fields go under ``learners: {NAME:
{...}}`` (shared by all its methods; a method's ``learner:`` overrides them).

Resuming: the resolved config is written to ``DIR/config.yaml`` at the start; rerunning the same
command into the same ``--out`` skips the runs whose ``result.json`` exists, continues a killed run
from its latest checkpoint (every ``checkpoint_every`` updates) and reproduces the uninterrupted
grid. A different config there is a ``ConfigError`` naming the first differing field (``workers``,
``smooth``, ``checkpoint_every`` and the bootstrap fields may change).

Output directory (``--out``, default ``runs/compare-<YYYYmmdd-HHMMSS>``)::

    config.yaml  results.md  results.json       resolved config; tables; every number
    plots/<metric>.png                          training curves, mean over seeds with a 95% t-band
    runs/<run>/   result.json  eval_episodes.jsonl  metrics.jsonl  checkpoints/ ...  (each run)

With ``workers: 2`` the runs go to two processes of ``threads`` torch threads each. One tqdm bar
counts the remaining work of the whole grid (agents.grid).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_env.agents.checkpoint import locked_run_dir
from repro_env.agents.grid import Job, check_saved_config, run_jobs
from repro_env.agents.report import write_results
from repro_env.agents.run_config import LEARNERS, apply_sets, learner_spec, parse_config
from repro_env.agents.train import TrainingInterrupted
from repro_env.config import (
    SEED_RANGE,
    check,
    describe,
    from_mapping,
    is_seed,
    options_from_mapping,
    read_yaml_file,
    suggest,
)
from repro_env.errors import ConfigError, ReproEnvError, ScorerError, TrainingError

ALIASES = ("grpo", "ppo")
"""Top-level learner sections of configs written before ``learners:`` (``grpo: {...}``)."""
REPRO = " + RePro"  # suffix of a learner's label in the rows that ``algorithms:`` expands to
START = "starting model"


@dataclass(frozen=True)
class MethodConfig:
    """One row of the grid: a learner, the process reward on or off, and what differs from the grid."""

    algorithm: str = "grpo"
    """Learner (a registered name or 'package.module:Class')."""
    process_reward: bool = False
    """RePro's process reward on (the learner's ``process_reward``)."""
    learner: dict[str, Any] = field(default_factory=dict)
    """Learner config fields on top of ``learners.<algorithm>``, e.g. ``{length_penalty: 0.5}``."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """TaskSpec overrides on top of the grid's, merged key by key, e.g. ``{reward: {stability_weight: 0.0}}``."""
    seeds: tuple[int, ...] | None = None
    """Seeds of this row; default: the grid's ``seeds`` (e.g. ``[0]`` for an ablation row)."""
    baseline: str | None = None
    """Row this one is paired with; default: the same algorithm's row without process reward or overrides."""

    def __post_init__(self) -> None:
        LEARNERS.check(self.algorithm, "algorithm")
        for key in ("model", "process_reward"):
            check(key not in self.learner, f"learner.{key}", self.learner.get(key),
                  "unset here ('model' is the grid's; 'process_reward' is the method's own field)")
        check(self.seeds is None or (len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
                                     and all(is_seed(s) for s in self.seeds)),
              "seeds", self.seeds, "a non-empty list of distinct ints in [0, 2**32 - 1], or unset")


@dataclass(frozen=True)
class AblationConfig:
    """``--ablation``: one learner + RePro, one factor at a time around the task's defaults, on one seed."""

    algorithm: str = "grpo"
    """Learner of every ablation row (a registered name or 'package.module:Class')."""
    seed: int = 0
    """Seed of every ablation row."""
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
    """The grid: task, starting model, budget, methods, evaluation, statistics and how runs are spread."""

    task: str = "RePro-Math-v0"
    """Gym id or task YAML of every run."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """TaskSpec overrides of every run (a method's own are merged on top)."""
    model: str = "bundled"
    """Starting model of every run: the policy and the scorer that computes J."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every method that does not list its own."""
    updates: int = 40
    """Updates of every run; with the rollouts per update that every method shares, the budget."""
    eval_problems: int = 100
    """Held-out problems of the final evaluation (test split, problems 0..N−1)."""
    eval_samples: int = 4
    """Samples per problem at temperature 1.0 (avg@n), besides the greedy response."""
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    """Row name → method, in table order; empty: ``algorithms`` each without and with RePro."""
    algorithms: tuple[str, ...] = ("grpo", "ppo")
    """Older spelling of ``methods`` (not both): learners, each without and with the process reward;
    empty once expanded into ``methods``."""
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Learner name → its config fields for all its methods (``model`` and ``process_reward`` are set per
    run). Top-level ``grpo:`` / ``ppo:`` sections are the old spelling of ``learners: {grpo: ...}``."""
    ablation: AblationConfig = field(default_factory=AblationConfig)
    """The rows that ``--ablation`` adds."""
    checkpoint_every: int = 5
    """Checkpoint of each run every this many updates (a killed grid resumes from there)."""
    bootstrap_samples: int = 2000
    """B: bootstrap draws of every interval."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap draws."""
    workers: int = 1
    """Processes training runs in parallel (1: in this process)."""
    threads: int = 1
    """torch threads of each worker."""
    smooth: int = 5
    """Plots: rolling mean over this many updates."""

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and all(is_seed(s) for s in self.seeds),
              "seeds", self.seeds, "a non-empty list of distinct ints in [0, 2**32 - 1]")
        for name in ("updates", "eval_problems", "checkpoint_every", "bootstrap_samples", "workers", "threads",
                     "smooth"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "an int >= 1")
        check(self.eval_samples >= 2, "eval_samples", self.eval_samples, "an int >= 2 (avg@n at T=1)")
        check(is_seed(self.bootstrap_seed), "bootstrap_seed", self.bootstrap_seed, SEED_RANGE)
        for name, section in self.learners.items():
            LEARNERS.check(name, f"learners.{name}")
            check(isinstance(section, Mapping), f"learners.{name}", section, f"a mapping of {name}'s config fields")
        if not self.methods:
            object.__setattr__(self, "methods", legacy_methods(self.algorithms))
        object.__setattr__(self, "algorithms", ())  # expanded: the resolved config lists the methods
        methods = {}
        for name, method in self.methods.items():
            check(isinstance(name, str) and bool(run_stem(name)), "methods", name,
                  "a mapping whose keys are row names with a letter or digit")
            methods[name] = options_from_mapping(MethodConfig, method, f"methods.{name}")
        object.__setattr__(self, "methods", methods)
        check(START not in methods, f"methods.{START}", START, "another name (the starting model's row)")
        stems: dict[str, str] = {}
        for name in methods:
            other = stems.setdefault(run_stem(name), name)
            check(other == name, f"methods.{name}", name,
                  f"a name whose directory stem ({run_stem(name)!r}) differs from that of {other!r}")
        for name in methods:
            baseline_of(self, name)  # checks an explicit baseline

    @classmethod
    def normalise_mapping(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Fold the old top-level ``grpo:`` / ``ppo:`` sections into ``learners``; refuse ``methods``
        together with ``algorithms``.

        Both spellings of a learner section may be given (e.g. ``--set learners.grpo.lr=…`` on an old
        config) when they set different fields; the same field in both is an error.
        """
        data = dict(data)
        if data.get("methods") and data.get("algorithms"):
            raise ConfigError("field 'algorithms' is the old spelling of 'methods' (each learner without and "
                              "with RePro); give one of them")
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


# -- methods ------------------------------------------------------------------------------------


def legacy_methods(algorithms: Sequence[str]) -> dict[str, MethodConfig]:
    """``algorithms: [grpo, ppo]`` as methods: ``GRPO``, ``GRPO + RePro``, ``PPO``, ``PPO + RePro``."""
    check(len(algorithms) >= 1 and len(set(algorithms)) == len(algorithms), "algorithms", algorithms,
          "a non-empty list of distinct learner names")
    methods: dict[str, MethodConfig] = {}
    owners: dict[str, str] = {}  # label → learner
    for i, algorithm in enumerate(algorithms):
        label = learner_spec(algorithm, f"algorithms[{i}]").label
        if label in owners:
            raise ConfigError(f"field 'algorithms': {owners[label]!r} and {algorithm!r} share the label {label!r}, "
                              f"so their table rows would merge; give one class its own 'label'")
        owners[label] = algorithm
        methods[label] = MethodConfig(algorithm=algorithm)
        methods[label + REPRO] = MethodConfig(algorithm=algorithm, process_reward=True)
    return methods


def with_ablation(config: CompareConfig) -> CompareConfig:
    """``config`` plus the ``ablation:`` rows on one seed: ``L + RePro, w=0``, ``…, k=3``, ``…, α=0.2``
    (each changed from the task's defaults), and ``L + RePro`` itself on that seed if no row runs it."""
    from repro_env.tasks import resolve_task

    ab = config.ablation
    label = learner_spec(ab.algorithm, "ablation.algorithm").label + REPRO
    reward = resolve_task(config.task, config.task_overrides).reward
    alpha = config.learners.get(ab.algorithm, {}).get("alpha")  # null means the task's
    alpha0 = reward.alpha if alpha is None else alpha
    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    variants += [(f"w={w:g}", {}, {"stability_weight": w}) for w in ab.stability_weight
                 if w != reward.stability_weight]
    variants += [(f"k={k}", {}, {"selection": "topk_entropy", "k": k}) for k in ab.k if k != "all"]
    variants += [(f"α={a:g}", {"alpha": a}, {}) for a in ab.alpha if a != alpha0]
    methods = dict(config.methods)
    main = methods.get(label)
    if main is None or ab.seed not in (main.seeds or config.seeds):
        methods[f"{label}, default" if main else label] = MethodConfig(ab.algorithm, True, seeds=(ab.seed,))
    for variant, learner, rewards in variants:
        overrides = {"reward": rewards} if rewards else {}
        methods[f"{label}, {variant}"] = MethodConfig(ab.algorithm, True, learner, overrides, seeds=(ab.seed,))
    return dataclasses.replace(config, methods=methods)


def method_seeds(config: CompareConfig, name: str) -> tuple[int, ...]:
    """The seeds of row ``name`` (the starting model's row: the first grid seed)."""
    return (config.seeds[0],) if name == START else (config.methods[name].seeds or config.seeds)


def baseline_of(config: CompareConfig, name: str) -> str | None:
    """The row that ``name`` is paired with, or None; an explicit baseline is checked."""
    method, seeds = config.methods[name], method_seeds(config, name)
    if method.baseline is not None:
        if method.baseline not in config.methods or method.baseline == name:
            others = [n for n in config.methods if n != name]
            raise ConfigError(f"field 'methods.{name}.baseline' must name another row of 'methods', got "
                              f"{describe(method.baseline)}.{suggest(method.baseline, others)}")
        missing = sorted(set(seeds) - set(method_seeds(config, method.baseline)))
        if missing:
            raise ConfigError(f"field 'methods.{name}.baseline': {method.baseline!r} does not run seed(s) "
                              f"{missing} of {name!r}, so the two cannot be paired; add them to its seeds")
        return method.baseline
    plain = MethodConfig(algorithm=method.algorithm)
    for other, candidate in config.methods.items():
        if dataclasses.replace(candidate, seeds=None) == plain and other != name:
            return other if set(seeds) <= set(method_seeds(config, other)) else None
    return None


def run_stem(name: str) -> str:
    """``GRPO + RePro, α=0.2`` → ``grpo-repro-alpha-0.2``: a row name made safe for a directory."""
    spelled = name.lower().replace("α", "alpha").replace("λ", "lambda")
    return re.sub(r"[^a-z0-9_.]+", "-", spelled).strip("-.")


def _merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(dict(base)))  # a deep copy
    for key, value in top.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def train_mapping(config: CompareConfig, out: Path, method: MethodConfig, *, seed: int, name: str) -> dict[str, Any]:
    """The TrainConfig mapping of one run: no periodic evaluation, the newest checkpoint kept."""
    overrides = _merged(config.task_overrides, method.task_overrides)
    overrides.setdefault("scorer", {})["model"] = config.model
    learner = {**config.learners.get(method.algorithm, {}), **method.learner, "model": config.model,
               "process_reward": method.process_reward}
    return {"algorithm": method.algorithm, "task": config.task, "task_overrides": overrides,
            "updates": config.updates, "eval_every": 0, "eval_problems": config.eval_problems,
            "eval_samples": config.eval_samples, "checkpoint_every": config.checkpoint_every,
            "keep_checkpoints": 1, "seed": seed, "out_dir": str(out / "runs" / name), "learner": learner}


def plan(config: CompareConfig, out: Path) -> tuple[list[Job], dict[str, dict[int, str]]]:
    """(jobs, cells): the runs to do, and row → seed → run name (identical run configs share a run)."""
    first = next(iter(config.methods.values()))
    start = train_mapping(config, out, first, seed=config.seeds[0], name="start")
    jobs = [Job("start", config.seeds[0], start, trains=False)]
    cells: dict[str, dict[int, str]] = {START: {config.seeds[0]: "start"}}
    by_config: dict[str, str] = {}
    for row, method in config.methods.items():
        cells[row] = {}
        for seed in method_seeds(config, row):
            name = f"{run_stem(row)}-seed{seed}"
            mapping = train_mapping(config, out, method, seed=seed, name=name)
            key = json.dumps({k: v for k, v in mapping.items() if k not in ("out_dir", "checkpoint_every")},
                             sort_keys=True)
            if key not in by_config:
                by_config[key] = name
                jobs.append(Job(name, seed, mapping, trains=True))
            cells[row][seed] = by_config[key]
    return jobs, cells


def check_learners(config: CompareConfig, source: str) -> None:
    """Parse every method's run config (no model is loaded); every method must collect the same
    rollouts per update, so that their budgets are equal."""
    budgets: dict[int, list[str]] = {}
    for name, method in config.methods.items():
        mapping = train_mapping(config, Path("runs"), method, seed=0, name="check")
        learner_config = parse_config(mapping, source=f"{source} (methods.{name})")[1]
        budget = getattr(learner_config, "rollouts_per_update", None)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"{source}: learner {method.algorithm!r}: {type(learner_config).__name__}."
                              f"rollouts_per_update must be an int >= 1 (episodes per collect, the budget that "
                              f"repro-env compare holds equal), got {budget!r}; give the config that property")
        budgets.setdefault(budget, []).append(name)
    if len(budgets) > 1:
        got = "; ".join(f"{n} for " + ", ".join(map(repr, names)) for n, names in budgets.items())
        raise ConfigError(f"{source}: every method must collect the same rollouts per update (the compared "
                          f"budget; each learner config's rollouts_per_update), got {got}; change the "
                          f"'learners' sections or the methods' 'learner' overrides so that they match")


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


STALE_REPORTS = ("ablation.md",)
"""Report files of older versions of this command; a rerun removes them, so that no old table sits
beside the new results.md."""


def own_grid_dir(out: Path, runs: set[str]) -> None:
    """The grid's directory holds only this grid: a run directory that is not one of ``runs`` is an
    error naming it (results of another grid would be mixed in); old report files are removed."""
    stray = sorted(p.name for p in (out / "runs").glob("*") if p.is_dir() and p.name not in runs)
    if stray:
        raise ConfigError(f"{out / 'runs'} holds runs that are not in this grid ({', '.join(stray[:5])}"
                          f"{', ...' if len(stray) > 5 else ''}); move them away, or choose another --out")
    for name in STALE_REPORTS:
        (out / name).unlink(missing_ok=True)


def compare(config: CompareConfig, out: Path, *, ablation: bool = False, progress: bool = True,
            command: str = "repro-env compare") -> Path:
    """Check every run's config, run (or resume) the grid in ``out``, write the results there."""
    if ablation:
        config = with_ablation(config)
    check_learners(config, "compare config")
    jobs, cells = plan(config, out)
    with locked_run_dir(out):
        check_saved_config(out, config)
        own_grid_dir(out, {job.name for job in jobs})
        t0 = time.perf_counter()
        results = run_jobs(jobs, config, out, progress=progress)
        baselines = {row: baseline_of(config, row) for row in config.methods}
        write_results(out, config, cells, baselines, results, time.perf_counter() - t0, command)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``repro-env compare CONFIG [--ablation] [--out DIR] [--set k=v ...]``; exit 0, 1 (a run failed),
    2 (a config error) or 130 (Ctrl-C; rerun the command to resume)."""
    parser = argparse.ArgumentParser(prog="repro-env compare", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="compare config YAML (configs/compare_tiny.yaml)")
    parser.add_argument("--ablation", action="store_true", help="also run the ablation section's one-seed rows")
    parser.add_argument("--out", help="output directory (default runs/compare-<timestamp>); rerun into it to resume")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted for nesting: --set learners.grpo.lr=3e-4 "
                             "(a name holding '.' or '=' in double quotes: --set 'methods.\"A, α=0.1\".seeds=[0]')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_compare_config(args.config, args.sets)
        out = Path(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
        command = "repro-env compare " + " ".join(sys.argv[2:] if argv is None else argv)
        compare(config, out, ablation=args.ablation, progress=not args.no_progress, command=command.strip())
    except TrainingInterrupted as e:
        print(f"Interrupted: {e}\nRerun the same command to resume the grid.", file=sys.stderr)
        return 130
    except (TrainingError, ScorerError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except ReproEnvError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"Output directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
