"""Tasks: one YAML file fully defines a reasoning environment and becomes a gym id.

A task YAML loads into a frozen :class:`TaskSpec` (``load_task``); gym keyword arguments override
it through :func:`repro_env.config.replace` with the same checks (``resolve_task``). Every invalid
value is a :class:`TaskSpecError` naming the file, the field, the value and what was expected::

    # tasks/math.yaml: the default task
    id: RePro-Math-v0
    description: Multi-step arithmetic word problems.
    source: {kind: arithmetic, arithmetic: {min_ops: 2, max_ops: 4}}
    scorer: {model: bundled}

``make_source(spec)`` builds the problems (``get(split, i)``, ``size(split)``) with the source kind
that ``source.kind`` names (:mod:`repro_env.sources`); ``check_task_file`` is ``repro-env tasks check FILE``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from repro_env.config import check, describe, from_mapping, read_yaml_file, replace, suggest, to_dict
from repro_env.errors import TaskSpecError
from repro_env.overthinking import ANSWER_LOCATIONS, AnswerLocation
from repro_env.problems import (
    DEFAULT_ANSWER_TEMPLATE,
    DEFAULT_PROMPT_TEMPLATE,
    Problem,
    ProblemSource,
    reasoning_gym_dataset,
)
from repro_env.reward import RewardConfig
from repro_env.scoring.base import ScorerConfig
from repro_env.segments import DEFAULT_DELIMITER, THINK_CLOSE, THINK_OPEN, SplitResponse, split_response
from repro_env.sources import ReasoningGymOptions, SourceConfig, override_source, resolve_paths, source_kind
from repro_env.verify import VerifierKind, outcome_reward

DEFAULT_FINAL_ANSWER_PATTERN = r"\\boxed\{"
DEFAULT_BACKTRACK_PATTERNS = (
    r"\bwait\b", r"\bhmm+\b", r"\bactually\b", r"\blet me re-?check\b", r"\blet me double[- ]check\b",
    r"\balternatively\b", r"\bno,",
)
"""REPRO_SPEC §6 (choice): a segment containing any of these (case-insensitive) is a backtrack."""
GENERATOR_TRAIN_SIZE = 100_000
GENERATOR_TEST_SIZE = 500
_GYM_ID = re.compile(r"(?:[\w:-]+/)?[\w:.-]+-v\d+")


@dataclass(frozen=True)
class SplitConfig:
    """Train/test splits. Generators: seeds and sizes; finite sources: a seeded partition.

    Train and test never share a question: generator train problems that also occur in the test
    split are redrawn (``problems.generator_source``), and finite sources partition their records.
    """

    train_seed: int = 0
    """Seed of the train split (generators)."""
    test_seed: int = 1_000_000_000
    """Seed of the test split (generators); far from ``train_seed`` because reasoning-gym seeds item
    ``i`` with ``seed + i``."""
    train_size: int | None = None
    """Problems in the train split; ``null``: 100000 for generators, every train record otherwise."""
    test_size: int | None = None
    """Problems in the test split; ``null``: 500 for generators, every test record otherwise."""
    test_fraction: float = 0.2
    """Finite sources without a split file or field: share of the records that go to test."""
    partition_seed: int = 0
    """Finite sources: seed of the shuffle that partitions records into train and test."""

    def __post_init__(self) -> None:
        for name in ("train_seed", "test_seed", "partition_seed"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "an int >= 0", TaskSpecError)
        check(self.train_seed != self.test_seed, "test_seed", self.test_seed,
              f"different from train_seed ({self.train_seed})", TaskSpecError)
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, value, "an int >= 1 or null", TaskSpecError)
        check(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "a number in (0, 1)",
              TaskSpecError)

    def sizes(self, default_train: int = GENERATOR_TRAIN_SIZE,
              default_test: int = GENERATOR_TEST_SIZE) -> tuple[int, int]:
        return (self.train_size or default_train, self.test_size or default_test)


@dataclass(frozen=True)
class LimitsConfig:
    """When an episode is cut off (truncation) and how long one action may be."""

    max_steps: int = 16
    """Segments per episode."""
    max_segment_chars: int = 1000
    """Characters per segment (the action space's length)."""
    max_segment_tokens: int = 256
    """Tokens per segment, for policies that generate segments."""
    max_total_tokens: int = 1024
    """Tokens of prompt + reasoning; the episode is truncated when it reaches this."""
    max_prompt_chars: int = 2000
    """Characters of a rendered prompt (bounds the observation space)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check(getattr(self, f.name) >= 1, f.name, getattr(self, f.name), "an int >= 1", TaskSpecError)


@dataclass(frozen=True)
class VerifierConfig:
    """How the final answer is checked (outcome reward R, REPRO_SPEC §5)."""

    kind: VerifierKind = "math"
    """``math`` (numbers, then math-verify), ``exact`` (normalised string) or ``reasoning_gym``
    (the dataset's own ``score_answer``; needs a reasoning_gym source)."""
    timeout_s: float = 5.0
    """math-verify time limit per answer; a timeout counts as incorrect."""

    def __post_init__(self) -> None:
        check(self.timeout_s > 0, "timeout_s", self.timeout_s, "a number > 0", TaskSpecError)


@dataclass(frozen=True)
class TaskSpec:
    """A reasoning environment: problems, prompt and answer templates, limits, reward, scorer."""

    id: str
    """Gym id, ``[namespace/]Name-vN`` (e.g. ``RePro-Math-v0``)."""
    description: str = ""
    """One paragraph for humans (shown by ``repro-env tasks``)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """Where problems come from."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """What the policy sees; must contain ``{question}``."""
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    """The answer string ``a`` whose log-prob is J (REPRO_SPEC §1); must contain ``{answer}``."""
    final_answer_pattern: str = DEFAULT_FINAL_ANSWER_PATTERN
    """Regex: a segment that matches it ends the episode (termination). A capture group, if any,
    also extracts the final answer."""
    delimiter: str = DEFAULT_DELIMITER
    """Segment delimiter (REPRO_SPEC §1); a segment keeps it."""
    think_tags: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE)
    """The open and close tags of a think block: in a response that has one, the reasoning is the
    block's inside (:func:`repro_env.segments.split_response`)."""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    """How the final answer is checked."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Episode and action limits."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """RePro reward defaults (α, w, selection, k, EMA β)."""
    backtrack_patterns: tuple[str, ...] = DEFAULT_BACKTRACK_PATTERNS
    """Case-insensitive regexes; a matching segment counts as a backtrack (REPRO_SPEC §6)."""
    answer_location: AnswerLocation = "none"
    """Where the gold answer shows inside the reasoning, for the tokens-after-first-correct measure
    (:mod:`repro_env.overthinking`): ``step_result`` (a segment whose ``a op b = c`` has ``c`` equal
    to the answer; the arithmetic tasks) or ``none`` (it cannot be located: the measure is not
    reported)."""
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    """The default model that computes J."""
    splits: SplitConfig = field(default_factory=SplitConfig)
    """Train/test seeds, sizes or partition."""

    def __post_init__(self) -> None:
        check(isinstance(self.id, str) and _GYM_ID.fullmatch(self.id) is not None, "id", self.id,
              "a gym id like 'RePro-Math-v0' ([namespace/]Name-vN)", TaskSpecError)
        _check_template(self.prompt_template, "prompt_template", "question")
        _check_template(self.answer_template, "answer_template", "answer")
        _check_regex(self.final_answer_pattern, "final_answer_pattern", 0)
        for i, pattern in enumerate(self.backtrack_patterns):
            _check_regex(pattern, f"backtrack_patterns[{i}]", re.IGNORECASE)
        check(self.delimiter != "", "delimiter", self.delimiter, "a non-empty string", TaskSpecError)
        check(len(self.think_tags) == 2 and all(self.think_tags) and self.think_tags[0] != self.think_tags[1],
              "think_tags", list(self.think_tags), "two different non-empty strings, [open, close]", TaskSpecError)
        check(self.answer_location in ANSWER_LOCATIONS, "answer_location", self.answer_location,
              " or ".join(map(repr, ANSWER_LOCATIONS)), TaskSpecError)
        reasoning_gym = isinstance(self.source.options, ReasoningGymOptions)
        check(self.verifier.kind != "reasoning_gym" or reasoning_gym, "verifier.kind",
              self.verifier.kind, f"'math' or 'exact' for source kind '{self.source.kind}' ('reasoning_gym' "
              "needs a reasoning_gym source)", TaskSpecError)
        if reasoning_gym:
            from repro_env.problems import MAX_DEDUPE_ATTEMPTS

            train, test = self.splits.sizes()
            train_end = self.splits.train_seed + train * MAX_DEDUPE_ATTEMPTS
            test_end = self.splits.test_seed + test
            check(train_end <= self.splits.test_seed or test_end <= self.splits.train_seed,
                  "splits.test_seed", self.splits.test_seed,
                  f"outside [{self.splits.train_seed - test}, {train_end}) (reasoning-gym item i uses "
                  "seed + i, so the seed windows of train and test must not overlap)", TaskSpecError)

    @property
    def final_answer_regex(self) -> re.Pattern[str]:
        return _compile(self.final_answer_pattern, 0)

    @property
    def max_prompt_chars(self) -> int:
        return self.limits.max_prompt_chars

    def render_prompt(self, problem: Problem) -> str:
        return self.prompt_template.format(question=problem.question)

    def render_answer(self, problem: Problem) -> str:
        """The answer string ``a`` of REPRO_SPEC §1 (default ``\\boxed{<answer>}``)."""
        return self.answer_template.format(answer=problem.answer)

    def split_response(self, prompt: str, response: str | Sequence[str]) -> SplitResponse:
        """:func:`repro_env.segments.split_response` with this task's delimiter, final-answer pattern
        and think tags: what RePro scores of a finished response."""
        return split_response(prompt, response, final_answer=self.final_answer_regex, delimiter=self.delimiter,
                              think_tags=self.think_tags)

    def is_backtrack(self, segment: str) -> bool:
        """REPRO_SPEC §6 (choice): the segment matches one of the backtrack patterns."""
        return any(_compile(p, re.IGNORECASE).search(segment) for p in self.backtrack_patterns)

    def outcome_reward(self, response: str, problem: Problem) -> float:
        """R of REPRO_SPEC §5 for a full response (the reasoning, ending with its final answer)."""
        scorer = None
        if self.verifier.kind == "reasoning_gym":
            options = self.source.options
            dataset = _scoring_dataset(options.dataset, tuple(sorted(options.options.items())))
            entry = problem.meta["entry"]
            scorer = lambda answer: dataset.score_answer(answer, entry)  # noqa: E731
        pattern = self.final_answer_pattern if _compile(self.final_answer_pattern, 0).groups else None
        return outcome_reward(response, problem.answer, verifier=self.verifier.kind, pattern=pattern,
                              timeout_s=self.verifier.timeout_s, answer_scorer=scorer)

    def verify(self, response: str, problem: Problem) -> bool:
        """Whether the response's final answer is fully correct (outcome reward 1)."""
        return self.outcome_reward(response, problem) >= 1.0


def _check_template(template: str, name: str, placeholder: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        template.format(**{placeholder: "x"})
    except (ValueError, KeyError, IndexError) as e:
        raise TaskSpecError(f"field '{name}' must be a format string whose only placeholder is "
                            f"{{{placeholder}}} (write literal braces as {{{{ and }}}}), got "
                            f"{describe(template)}: {e!r}") from e
    check(placeholder in fields, name, template, f"a template containing the placeholder {{{placeholder}}}",
          TaskSpecError)
    # "\boxed{answer}" is a valid format string that renders "\boxed42": the braces are eaten.
    check(re.search(r"\\[A-Za-z]+\{" + placeholder + r"\}", template) is None, name, template,
          f"a template whose LaTeX braces are doubled, e.g. '\\boxed{{{{{{{placeholder}}}}}}}'",
          TaskSpecError)


def _check_regex(pattern: str, name: str, flags: int) -> None:
    try:
        _compile(pattern, flags)
    except re.error as e:
        raise TaskSpecError(f"field '{name}' must be a valid regular expression, got {describe(pattern)}: "
                            f"{e.msg} at position {e.pos}") from e


@lru_cache(maxsize=512)
def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


@lru_cache(maxsize=16)
def _scoring_dataset(name: str, options: tuple[tuple[str, Any], ...]):
    """A one-item dataset for its ``score_answer``, which depends only on the dataset's config."""
    return reasoning_gym_dataset(name, dict(options), seed=0, size=1)


# ---------------------------------------------------------------------------------------------
# Loading


def load_task(task: str | Path) -> TaskSpec:
    """The task in a YAML file, or a built-in task by gym id (``RePro-Math-v0``)."""
    path = Path(task)
    if path.suffix in (".yaml", ".yml") and not path.is_file():
        raise TaskSpecError(f"{path}: no such task file (cwd: {Path.cwd()})")
    if not path.is_file():
        builtin = builtin_task_ids()
        if str(task) not in builtin:
            raise TaskSpecError(f"task must be a YAML file or a built-in task id, got {describe(str(task))}."
                                f"{suggest(str(task), builtin)} Built-in: {', '.join(sorted(builtin))}")
        path = builtin[str(task)]
    return from_mapping(TaskSpec, _read_yaml(path), source=str(path), error=TaskSpecError)


def resolve_task(task: TaskSpec | str | Path, overrides: Mapping[str, Any] | None = None) -> TaskSpec:
    """``task`` (spec, file or id) with keyword overrides applied and checked (``gym.make`` kwargs)."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    if overrides:
        where = f"{spec.id} overrides"
        if isinstance(overrides.get("source"), Mapping):  # flat keys, merged into the kind's options
            overrides = {**overrides, "source": override_source(spec.source, overrides["source"], where)}
        spec = replace(spec, overrides, source=where, error=TaskSpecError)
    return spec


def _read_yaml(path: Path) -> Any:
    data = read_yaml_file(path, TaskSpecError)
    if isinstance(data, dict) and isinstance(data.get("source"), dict):  # data files sit next to the YAML
        data = {**data, "source": resolve_paths(data["source"], path.parent)}
    return data


def builtin_task_files() -> list[Path]:
    """The task YAMLs shipped with the package (``tasks/*.yaml``, as ``repro_env.builtin_tasks``)."""
    try:
        root = Path(str(importlib.resources.files("repro_env.builtin_tasks")))
    except ModuleNotFoundError:  # running from a source checkout that was never pip-installed
        root = Path(__file__).resolve().parent.parent / "tasks"
    return sorted(root.glob("*.yaml"))


@lru_cache(maxsize=1)
def _builtin_ids() -> tuple[tuple[str, Path], ...]:
    return tuple((load_task(p).id, p) for p in builtin_task_files())


def builtin_task_ids() -> dict[str, Path]:
    """Gym id → YAML file of every built-in task."""
    return dict(_builtin_ids())


# ---------------------------------------------------------------------------------------------
# Problem sources


def make_source(spec: TaskSpec) -> ProblemSource:
    """The problems of ``spec`` (``get(split, i)`` is a pure function of the spec, split and ``i``)."""
    return source_kind(spec.source.kind).build(spec.source.options, spec)


def check_task_file(path: str | Path, samples: int = 3) -> str:
    """``repro-env tasks check FILE``: the resolved spec as YAML and ``samples`` train problems."""
    spec = load_task(path)
    source = make_source(spec)
    resolved = yaml.safe_dump(_plain(resolved_dict(spec)), sort_keys=False)
    lines = [f"# {path}: valid task {spec.id}",
             f"# train: {source.size('train')} problems, test: {source.size('test')} problems", resolved]
    for i in range(min(samples, source.size("train"))):
        problem = source.get("train", i)
        lines.append(f"--- sample {i}: {problem.id}")
        lines.append(f"prompt: {spec.render_prompt(problem)!r}")
        lines.append(f"answer: {spec.render_answer(problem)!r}")
        for j, segment in enumerate(problem.solution or ()):
            lines.append(f"  step {j + 1}: {segment.rstrip()}")
    return "\n".join(lines) + "\n"


def resolved_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec as plain data, the source flat as in the YAML (``kind`` and that kind's options)."""
    return {**to_dict(spec), "source": spec.source.to_mapping()}


def _plain(value: Any) -> Any:
    """Tuples as lists and dicts as dicts, for ``yaml.safe_dump``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
