"""What ``repro-env train`` runs: the run config, the learner registry, YAML loading and resume.

A run is a :class:`TrainConfig` plus its learner's config dataclass (the ``learner:`` section),
both validated at load (``parse_config``: every error names the file and field); ``--set a.b=v``
overrides are applied first (``apply_sets``). ``algorithm:`` names a learner in :data:`LEARNERS`
(``register_learner``, a plugin's entry point, or a ``package.module:Class`` path). A resumed run
reads the config saved in its directory and may change only ``RESUMABLE_FIELDS``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repro_env.agents.checkpoint import CONFIG
from repro_env.config import SEED_RANGE, check, describe, from_mapping, is_seed, load_yaml, read_yaml_file, to_dict
from repro_env.errors import ConfigError
from repro_env.registry import Registry

# Fields that may change when a run is resumed; any other change would silently mix two experiments.
RESUMABLE_FIELDS = ("updates", "eval_every", "eval_problems", "eval_samples", "checkpoint_every",
                    "keep_checkpoints", "out_dir")

LEARNERS = Registry("learner", "repro_env.learners",
                    accepts=lambda target: isinstance(target, type | LearnerSpec), expected="a Learner class")
"""``algorithm:`` names → Learner classes (or their paths); plugins add theirs under the entry-point
group ``repro_env.learners``, e.g. ``my-learner = "my_plugin.learner:MyLearner"``."""
LEARNERS.register("grpo", "repro_env.agents.grpo:GRPO")
LEARNERS.register("ppo", "repro_env.agents.ppo:PPO")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: which learner on which task for how long, and what gets recorded."""

    algorithm: str = "grpo"
    """'grpo', 'ppo', a name added with ``register_learner`` or a plugin's entry point, or
    'package.module:Class' (a Learner class with a ``config_class`` attribute, built as
    ``Class(config, task, seed=seed)``)."""
    task: str = "RePro-Math-v0"
    """Gym id of a registered task or a task YAML path."""
    learner: dict[str, Any] = field(default_factory=dict)
    """The learner's config (GRPOConfig / PPOConfig fields); unknown keys are errors."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """TaskSpec overrides for the training envs, e.g. ``{reward: {alpha: 0.2}}``."""
    updates: int = 100
    """Total updates of the run (a resumed run continues up to this count)."""
    eval_every: int = 10
    """Held-out evaluation every this many updates (and before the first, after the last); 0: never."""
    eval_problems: int = 50
    """Held-out problems per evaluation."""
    eval_samples: int = 1
    """Samples per problem for avg@n accuracy at temperature 1.0; 1: greedy evaluation only."""
    checkpoint_every: int = 10
    """Checkpoint every this many updates; the last update is always checkpointed."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    seed: int = 0
    """Seed of the learner (policy init, sampling, problem order)."""
    out_dir: str | None = None
    """Run directory; default ``runs/<config file name>-<YYYYmmdd-HHMMSS>``."""

    def __post_init__(self) -> None:
        LEARNERS.check(self.algorithm, "algorithm")
        check(bool(self.task), "task", self.task, "a task id or YAML path")
        check(self.updates >= 1, "updates", self.updates, "an int >= 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, "an int >= 0 (0 disables evaluation)")
        check(self.eval_problems >= 1, "eval_problems", self.eval_problems, "an int >= 1")
        check(self.eval_samples >= 1, "eval_samples", self.eval_samples, "an int >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "an int >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, "an int >= 1")
        check(is_seed(self.seed), "seed", self.seed, SEED_RANGE)


# -- learners ---------------------------------------------------------------------------------

LearnerFactory = Callable[[Any, TrainConfig], Any]


@dataclass(frozen=True)
class LearnerSpec:
    """How ``repro-env train`` builds a learner and how ``repro-env compare`` names it."""

    config_class: type
    """The learner's config dataclass (the ``learner:`` section)."""
    factory: LearnerFactory
    """``factory(learner_config, train_config)`` builds the learner (loads its model)."""
    label: str
    """Row label in ``repro-env compare`` tables (``GRPO``; the process-reward run adds `` + RePro``)."""


def task_for(config: TrainConfig, *, validate: bool = False) -> Any:
    """The task argument for a learner: the id/path, or a TaskSpec when overrides are given."""
    if not config.task_overrides and not validate:
        return config.task
    from repro_env.tasks import resolve_task

    spec = resolve_task(config.task, config.task_overrides)
    return spec if config.task_overrides else config.task


def _construct(cls: type, learner_config: Any, run: TrainConfig) -> Any:
    return cls(learner_config, task_for(run), seed=run.seed)


def register_learner(name: str, learner: type | str, factory: LearnerFactory | None = None, *,
                     replace: bool = False) -> None:
    """Make ``algorithm: NAME`` build a learner (installed plugins use the entry-point group instead).

    ``learner`` is a Learner class with a ``config_class`` attribute (and optionally ``label``), or
    its ``"package.module:Class"`` path, built as ``Class(config, task, seed=seed)``. With
    ``factory``, ``learner`` is the config dataclass and the learner is
    ``factory(config_class(**learner_section), train_config)``, labelled ``NAME``.
    """
    target = learner if factory is None else LearnerSpec(learner, factory, name)
    LEARNERS.register(name, target, replace=replace)


def learner_spec(algorithm: str, field: str = "algorithm") -> LearnerSpec:
    """The :class:`LearnerSpec` of a registered name or a ``'package.module:Class'`` path."""
    LEARNERS.check(algorithm, field)
    try:
        target = LEARNERS.get(algorithm, field)
    except ConfigError as e:
        raise ConfigError(f"field '{field}': {e}") from e
    if isinstance(target, LearnerSpec):
        return target
    config_class = getattr(target, "config_class", None)
    if not dataclasses.is_dataclass(config_class):
        raise ConfigError(f"field '{field}' {algorithm!r}: the class needs a 'config_class' attribute "
                          f"holding its config dataclass, got {describe(config_class)}")
    label = getattr(target, "label", None) or algorithm.rpartition(":")[2]
    return LearnerSpec(config_class, functools.partial(_construct, target), str(label))


def build_learner(config: TrainConfig, learner_config: Any) -> Any:
    """Construct the learner for ``config`` (loads its model; no checkpoint yet)."""
    return learner_spec(config.algorithm).factory(learner_config, config)


# -- configs ----------------------------------------------------------------------------------


def read_config_yaml(path: Path) -> dict[str, Any]:
    """A train YAML's top-level mapping; ``ConfigError`` naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of TrainConfig fields, got {describe(data)}")
    return data


def apply_sets(data: Mapping[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``a.b=value`` applied (value parsed as YAML: ``3``, ``true``, ``[1, 2]``).
    A key holding ``.`` or ``=`` is written in double quotes: ``methods."RePro, α=0.1".lr=1e-4``."""
    merged = _deep_copy(data)
    for item in sets:
        parts, raw = _split_set(item)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from e
        node = merged
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{'.'.join(parts[:i + 1])}' is {describe(child)}, "
                                  f"not a mapping, so it has no key '{parts[i + 1]}'")
            node = child
        node[parts[-1]] = value
    return merged


def _split_set(item: str) -> tuple[list[str], str]:
    """``KEY=VALUE`` → (the dotted key's parts, VALUE); ``.`` and ``=`` inside double quotes are the key's own."""
    parts, current, quoted = [], "", False
    for i, char in enumerate(item):
        if char == '"':
            quoted = not quoted
        elif quoted or char not in ".=":
            current += char
        else:
            parts.append(current.strip())
            if char == "=":
                if all(parts):
                    return parts, item[i + 1:]
                break
            current = ""
    raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. learner.lr=1e-5 "
                      '(a key holding "." or "=" goes in double quotes: methods."RePro, α=0.1".lr=1e-4)')


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    return list(map(_deep_copy, data)) if isinstance(data, list | tuple) else data


def parse_config(data: Mapping[str, Any], *, source: str) -> tuple[TrainConfig, Any]:
    """(TrainConfig, learner config dataclass) from a mapping; every error names ``source``.

    A relative task YAML path is taken relative to the config file when it exists there. The task
    and its overrides are validated too (no model is loaded).
    """
    data = dict(data)
    task = data.get("task")
    if isinstance(task, str) and task.endswith((".yaml", ".yml")) and not Path(task).is_absolute():
        beside = Path(source).parent / task
        data["task"] = str(beside.resolve()) if beside.is_file() else task
    config = from_mapping(TrainConfig, data, source=source)
    try:
        spec = learner_spec(config.algorithm)
    except ConfigError as e:
        raise type(e)(f"{source}: {e}") from e
    learner_config = from_mapping(spec.config_class, config.learner, source=source, prefix="learner.")
    try:
        task_for(config, validate=True)
    except ConfigError as e:
        raise type(e)(f"{source}: field 'task' / 'task_overrides': {e}") from e
    return config, learner_config


def load_config(path: str | Path, sets: Sequence[str] = ()) -> tuple[TrainConfig, Any]:
    """Read a train YAML, apply ``--set`` overrides, validate; fill ``out_dir`` when unset."""
    path = Path(path)
    config, learner_config = parse_config(apply_sets(read_config_yaml(path), sets), source=str(path))
    if config.out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = dataclasses.replace(config, out_dir=str(Path("runs") / f"{path.stem}-{stamp}"))
    return config, learner_config


def _yaml_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_yaml_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def dump_config(config: TrainConfig, learner_config: Any) -> str:
    """The resolved config as YAML (``learner`` holds every field of the learner's dataclass)."""
    data = to_dict(config) | {"learner": to_dict(learner_config)}
    head = "# Resolved config of this run (written by repro-env train); resume with --resume RUN_DIR.\n"
    return head + yaml.safe_dump(_yaml_plain(data), sort_keys=False)


def resume_config(run_dir: Path, config_path: str | None, sets: Sequence[str]) -> tuple[TrainConfig, Any]:
    """The config for resuming ``run_dir``: its saved config (or ``config_path``) plus ``sets``.

    Only ``RESUMABLE_FIELDS`` may differ from the saved config (e.g. raise ``updates`` to extend).
    """
    moved = [item for item in sets if item.partition("=")[0].strip() == "out_dir"]
    if moved:
        raise ConfigError(f"--set {moved[0]!r}: a resumed run continues in its own directory {str(run_dir)!r}; to "
                          "branch it, copy that directory and resume the copy")
    saved_path = run_dir / CONFIG
    if not saved_path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no {CONFIG} there; is it a run directory?")
    saved, saved_learner = parse_config(read_config_yaml(saved_path), source=str(saved_path))
    old = to_dict(saved) | {"learner": to_dict(saved_learner)}
    base = read_config_yaml(Path(config_path)) if config_path else old
    source = config_path or str(saved_path)
    config, learner_config = parse_config(apply_sets(base, sets), source=source)
    config = dataclasses.replace(config, out_dir=str(run_dir))
    new = to_dict(config) | {"learner": to_dict(learner_config)}
    for key in new:
        if key not in RESUMABLE_FIELDS and new[key] != old[key]:
            raise ConfigError(f"{source}: field '{key}' cannot change on resume (saved {describe(old[key])}, "
                              f"got {describe(new[key])}); only {', '.join(RESUMABLE_FIELDS)} may change. "
                              f"Start a new run to change it.")
    return config, learner_config
