"""Problem sources: a task's ``source:`` names a registered kind and gives that kind's options.

The options sit flat next to ``kind`` in the task YAML, and each kind checks its own::

    source: {kind: jsonl, path: data/train.jsonl, question_field: q, answer_field: a}

A new kind is one module plus one line: a frozen options dataclass (its fields are the YAML keys,
checked in ``__post_init__``) and a builder decorated with :func:`register_source`::

    @register_source("jsonl", options=JsonlOptions, path_fields=("path", "test_path"))
    def jsonl_problems(options: JsonlOptions, spec: TaskSpec) -> ProblemSource: ...

``path_fields`` are resolved against the task YAML's directory. The decorator returns a
:class:`SourceKind` (callable like the builder), and a task can name it by path without any
registration, ``kind: "my_plugin.sources:my_problems"``. An installed package adds a name through
the ``repro_env.sources`` entry-point group, whose value is the path of that ``SourceKind``::

    [project.entry-points."repro_env.sources"]
    my-kind = "my_plugin.sources:my_problems"

The built-in kinds: ``arithmetic``, ``reasoning_gym``, ``jsonl``, ``hf_dataset``, ``inline``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro_env.arithmetic import ArithmeticConfig
from repro_env.config import check, describe, from_mapping, options_from_mapping, replace, to_dict
from repro_env.errors import ConfigError, TaskSpecError
from repro_env.problems import (
    ProblemSource,
    RecordFields,
    arithmetic_source,
    read_hf_dataset,
    read_jsonl,
    reasoning_gym_source,
    record_source,
)
from repro_env.registry import Registry

if TYPE_CHECKING:
    from repro_env.tasks import TaskSpec

SOURCES = Registry("problem source", "repro_env.sources")
"""Kind name → :class:`SourceKind` (or the ``"package.module:name"`` path of one)."""


@dataclass(frozen=True)
class SourceKind:
    """A kind of problem source: its options dataclass and the builder that turns them into problems."""

    name: str
    """The ``kind`` a task YAML writes."""
    build: Callable[[Any, TaskSpec], ProblemSource]
    """``build(options, spec)``: the problems; ``get(split, i)`` is a pure function of both and ``i``."""
    options: type
    """Frozen dataclass whose fields are the kind's YAML keys, checked in its ``__post_init__``."""
    path_fields: tuple[str, ...] = ()
    """Options that are file paths; a relative one is resolved against the task YAML's directory."""
    path_may_be_name: bool = False
    """A relative path with no such file next to the YAML stays as written (e.g. a dataset name)."""

    def __call__(self, options: Any, spec: TaskSpec) -> ProblemSource:
        return self.build(options, spec)


def register_source(name: str, *, options: type, path_fields: tuple[str, ...] = (),
                    path_may_be_name: bool = False) -> Callable[[Callable[..., ProblemSource]], SourceKind]:
    """Decorator: register ``build(options, spec) -> ProblemSource`` as the source kind ``name``.

    The registry keeps the builder's import path when it has one, so an entry point that names the
    same object is the same registration, not a conflict.
    """
    check(dataclasses.is_dataclass(options) and isinstance(options, type), "options", options,
          "a dataclass type", ConfigError)
    names = {f.name for f in dataclasses.fields(options)}
    for key in path_fields:
        check(key in names, "path_fields", path_fields, f"fields of {options.__name__}", ConfigError)

    def decorator(build: Callable[..., ProblemSource]) -> SourceKind:
        kind = SourceKind(name, build, options, tuple(path_fields), path_may_be_name)
        path = f"{build.__module__}:{build.__qualname__}"
        SOURCES.register(name, kind if "<locals>" in path else path)
        return kind

    return decorator


def source_kind(name: Any, field: str = "kind") -> SourceKind:
    """The kind registered as ``name`` (or named by a ``"package.module:name"`` path)."""
    try:
        kind = SOURCES.get(name, field)
    except TaskSpecError:
        raise
    except ConfigError as e:
        raise TaskSpecError(str(e)) from e
    if not isinstance(kind, SourceKind):
        raise TaskSpecError(f"field '{field}' must name a source kind made by @register_source, got "
                            f"{name!r}, which is {describe(kind)}")
    return kind


@dataclass(frozen=True)
class SourceConfig:
    """Where problems come from: a registered ``kind`` and that kind's options.

    The YAML writes the options flat next to ``kind`` (``{kind: jsonl, path: ...}``);
    ``normalise_mapping`` gathers them into ``options``, which ``__post_init__`` checks and turns
    into the kind's options dataclass.
    """

    kind: str = "arithmetic"
    """A registered source kind (see :data:`SOURCES`) or the ``"package.module:name"`` path of one."""
    options: Any = None
    """The kind's options dataclass (a mapping of its keys is converted); ``None``: its defaults."""

    @classmethod
    def normalise_mapping(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The flat YAML form ``{kind, **options}`` as ``{kind, options}``."""
        options = {k: v for k, v in data.items() if k != "kind"}
        return {"kind": data["kind"], "options": options} if "kind" in data else {"options": options}

    def __post_init__(self) -> None:
        kind = source_kind(self.kind)
        object.__setattr__(self, "options", _build_options(kind, self.kind, self.options))

    def to_mapping(self) -> dict[str, Any]:
        """The flat YAML form ``{kind, **options}`` as plain data, the kind's own keys before inherited ones."""
        inherited = {f.name for base in type(self.options).__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        options = sorted(to_dict(self.options).items(), key=lambda item: item[0] in inherited)
        return {"kind": self.kind, **dict(options)}


def _build_options(kind: SourceKind, name: str, options: Any) -> Any:
    if isinstance(options, kind.options):
        return options
    options = {} if options is None else options
    check(isinstance(options, Mapping), "options", options,
          f"a mapping of the keys of source kind '{name}' or an instance of {kind.options.__name__}", TaskSpecError)
    own = {f.name for f in dataclasses.fields(kind.options)}
    for key in [k for k in options if k not in own]:
        users = [other for other in SOURCES.names() if key in _option_names(other)]
        check(not users, key, options[key], f"unset for source kind '{name}' (it applies to: "
              f"{', '.join(users)})", TaskSpecError)
    return options_from_mapping(kind.options, options, error=TaskSpecError)  # the caller adds "file: source."


def _option_names(name: str) -> set[str]:
    """The keys of another registered kind, for "it applies to"; a plugin that fails to import has none."""
    try:
        return {f.name for f in dataclasses.fields(source_kind(name).options)}
    except ConfigError:
        return set()


def override_source(source: SourceConfig, overrides: Mapping[str, Any], where: str) -> SourceConfig:
    """``source`` with flat keyword overrides (``{"path": ...}``, ``{"arithmetic": {"max_ops": 3}}``).

    Nested options merge as in :func:`repro_env.config.replace`; a different ``kind`` starts from
    that kind's defaults. Errors name ``where`` and ``source.KEY``.
    """
    if overrides.get("kind", source.kind) != source.kind:
        return from_mapping(SourceConfig, overrides, source=where, error=TaskSpecError, prefix="source.")
    options = {k: v for k, v in overrides.items() if k != "kind"}
    return SourceConfig(source.kind, replace(source.options, options, source=where, error=TaskSpecError,
                                             prefix="source."))


def resolve_paths(source: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A flat ``source`` mapping with its kind's relative ``path_fields`` resolved against ``root``."""
    source = dict(source)
    try:
        kind = source_kind(source.get("kind", "arithmetic"))
    except ConfigError:  # SourceConfig reports it, naming the file
        return source
    for key in kind.path_fields:
        value = source.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            local = root / value
            if not kind.path_may_be_name or local.exists():
                source[key] = str(local.resolve())
    return source


# ---------------------------------------------------------------------------------------------
# Built-in kinds


@dataclass(frozen=True)
class ArithmeticOptions:
    """``kind: arithmetic``: the built-in word-problem generator (``repro_env.arithmetic``)."""

    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """Difficulty of the generated word problems."""


@register_source("arithmetic", options=ArithmeticOptions)
def arithmetic_problems(options: ArithmeticOptions, spec: TaskSpec) -> ProblemSource:
    splits = spec.splits
    return arithmetic_source(options.arithmetic, splits.train_seed, splits.test_seed, *splits.sizes())


@dataclass(frozen=True)
class ReasoningGymOptions:
    """``kind: reasoning_gym``: a reasoning-gym dataset, generated from the split seeds."""

    dataset: str = ""
    """Dataset name (``basic_arithmetic``, ``chain_sum``, ``gsm_symbolic`` ...)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the dataset's config (e.g. ``difficulty``)."""

    def __post_init__(self) -> None:
        check(bool(self.dataset), "dataset", self.dataset,
              "a reasoning-gym dataset name for source kind 'reasoning_gym'", TaskSpecError)


@register_source("reasoning_gym", options=ReasoningGymOptions)
def reasoning_gym_problems(options: ReasoningGymOptions, spec: TaskSpec) -> ProblemSource:
    splits = spec.splits
    return reasoning_gym_source(options.dataset, options.options, splits.train_seed, splits.test_seed,
                                *splits.sizes(), delimiter=spec.delimiter)


@dataclass(frozen=True)
class JsonlOptions(RecordFields):
    """``kind: jsonl``: one JSON object per line."""

    path: str = ""
    """The file; a relative path starts at the task YAML's directory."""
    test_path: str = ""
    """A separate test file (explicit split); empty: partition ``path``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path) and Path(self.path).is_file(), "path", self.path,
              "an existing JSONL file (relative paths start at the task YAML's directory)", TaskSpecError)
        check(not self.test_path or Path(self.test_path).is_file(), "test_path", self.test_path,
              "an existing JSONL file or empty", TaskSpecError)


@register_source("jsonl", options=JsonlOptions, path_fields=("path", "test_path"))
def jsonl_problems(options: JsonlOptions, spec: TaskSpec) -> ProblemSource:
    def load(key: str) -> Callable[[], list]:
        return lambda: _non_empty(read_jsonl(getattr(options, key)), key, getattr(options, key))

    return _records(Path(options.path).stem, load("path"), load("test_path") if options.test_path else None,
                    options, spec)


@dataclass(frozen=True)
class HFDatasetOptions(RecordFields):
    """``kind: hf_dataset``: a Hugging Face dataset read offline (needs the ``datasets`` extra)."""

    path: str = ""
    """A local dataset directory (relative: to the task YAML, when it exists) or a cached dataset name."""
    hf_split: str = "train"
    """The split that holds the problems."""
    hf_test_split: str = ""
    """A separate test split (explicit split); empty: partition ``hf_split``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.path), "path", self.path,
              "a local Hugging Face dataset directory or a cached dataset name", TaskSpecError)


@register_source("hf_dataset", options=HFDatasetOptions, path_fields=("path",), path_may_be_name=True)
def hf_dataset_problems(options: HFDatasetOptions, spec: TaskSpec) -> ProblemSource:
    def load(split: str, key: str) -> Callable[[], list]:
        return lambda: _non_empty(read_hf_dataset(options.path, split), key, getattr(options, key))

    load_test = load(options.hf_test_split, "hf_test_split") if options.hf_test_split else None
    return _records(Path(options.path).name, load(options.hf_split, "path"), load_test, options, spec)


@dataclass(frozen=True)
class InlineOptions(RecordFields):
    """``kind: inline``: the problems written in the task YAML itself."""

    items: tuple[dict[str, Any], ...] = ()
    """The problems, e.g. ``[{question: "2+3?", answer: "5"}]``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.items) > 0, "items", self.items,
              "a non-empty list of {question, answer} mappings for source kind 'inline'", TaskSpecError)
        for i, item in enumerate(self.items):
            missing = [k for k in (self.question_field, self.answer_field) if k not in item]
            check(not missing, f"items[{i}]", item,
                  f"a mapping with keys '{self.question_field}' and '{self.answer_field}'", TaskSpecError)


@register_source("inline", options=InlineOptions)
def inline_problems(options: InlineOptions, spec: TaskSpec) -> ProblemSource:
    records = [(f"{spec.id}: source.items[{i}]", dict(item)) for i, item in enumerate(options.items)]
    return _records(f"{spec.id}-inline", lambda: records, None, options, spec)


def _records(name: str, load: Callable[[], list], load_test: Callable[[], list] | None,
             options: RecordFields, spec: TaskSpec) -> ProblemSource:
    splits = spec.splits
    return record_source(name, load, load_test, options, test_fraction=splits.test_fraction,
                         partition_seed=splits.partition_seed, train_size=splits.train_size,
                         test_size=splits.test_size, delimiter=spec.delimiter)


def _non_empty(records: list, key: str, value: str) -> list:
    check(len(records) > 0, f"source.{key}", value, "a source with at least one record", TaskSpecError)
    return records
