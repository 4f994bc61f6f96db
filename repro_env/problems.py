"""Problems: the unit a task draws from. Sources (generators, JSONL, HF datasets, inline) live here."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from repro_env.config import check, describe, suggest
from repro_env.errors import TaskSpecError
from repro_env.segments import DEFAULT_DELIMITER

if TYPE_CHECKING:
    from repro_env.arithmetic import ArithmeticConfig

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\n\n"
"""What the policy sees; the reasoning segments follow it directly."""
DEFAULT_ANSWER_TEMPLATE = "\\boxed{{{answer}}}"
"""The answer string ``a`` whose mean log-prob is J (REPRO_SPEC §1); ``{answer}`` is filled in."""


@dataclass(frozen=True)
class Problem:
    """One question with its ground-truth answer and, when the source has one, a reference solution."""

    id: str
    """Stable id, e.g. ``arith-train-0-17`` (source, split, seed, index)."""
    question: str
    answer: str
    """Ground truth as text (``"42"``, ``"\\frac{1}{2}"``)."""
    solution: tuple[str, ...] | None = None
    """Reference chain of thought, one segment per step, each ending with the delimiter; the last
    segment states the final answer (``The answer is \\boxed{42}.``)."""
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Sources: a train and a test split, each a fixed-length, random-access, deterministic sequence.

SPLITS = ("train", "test")
MAX_DEDUPE_ATTEMPTS = 8
"""A generated train problem whose question is also in the test split is redrawn at index
``i + r·train_size`` (r = 1, 2, ...): train and test never share a question."""


class ProblemSet(Sequence[Problem]):
    """One split of a source. ``problems[i]`` is a pure function of the task spec and ``i``."""

    def __init__(self, name: str, size: Callable[[], int], fetch: Callable[[int], Problem]):
        self.name = name
        self._size = size
        self._fetch = fetch

    def __len__(self) -> int:
        return self._size()

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"{self.name}: index must be an int, got {type(index).__name__}")
        size = len(self)
        if not 0 <= index < size:
            raise IndexError(f"{self.name}: index {index} out of range [0, {size})")
        return self._fetch(int(index))


class ProblemSource:
    """The problems of a task: ``get(split, i)``, ``size(split)``; files are read on first use."""

    def __init__(self, name: str, train: ProblemSet, test: ProblemSet):
        self.name = name
        self.splits = {"train": train, "test": test}

    def split(self, split: str) -> ProblemSet:
        if not isinstance(split, str) or split not in self.splits:
            raise TaskSpecError(f"{self.name}: split must be one of {', '.join(map(repr, SPLITS))}, "
                                f"got {split!r}.{suggest(str(split), SPLITS)}")
        return self.splits[split]

    def size(self, split: str) -> int:
        return len(self.split(split))

    def get(self, split: str, index: int) -> Problem:
        return self.split(split)[index]


def generator_source(name: str, generate: Callable[[str, int], Problem], train_size: int,
                     test_size: int) -> ProblemSource:
    """A source over a generator ``generate(split, raw_index)``; train problems skip test questions."""
    test = ProblemSet(f"{name}/test", lambda: test_size, lambda i: generate("test", i))

    @lru_cache(maxsize=1)
    def test_questions() -> frozenset[str]:
        return frozenset(test[i].question for i in range(test_size))

    def fetch_train(index: int) -> Problem:
        for attempt in range(MAX_DEDUPE_ATTEMPTS):
            problem = generate("train", index + attempt * train_size)
            if problem.question not in test_questions():
                return problem
        raise TaskSpecError(
            f"{name}: train problem {index} collides with the test split {MAX_DEDUPE_ATTEMPTS} times: the "
            f"generator has too few distinct problems for test_size={test_size}; lower 'splits.test_size' "
            "or widen the generator's ranges"
        )

    train = ProblemSet(f"{name}/train", lambda: train_size, fetch_train)
    return ProblemSource(name, train, test)


def arithmetic_source(config: ArithmeticConfig, train_seed: int, test_seed: int, train_size: int,
                      test_size: int) -> ProblemSource:
    """The built-in word problems (``repro_env.arithmetic``), one solution segment per operation."""
    from repro_env.arithmetic import generate_problem

    seeds = {"train": train_seed, "test": test_seed}
    return generator_source("arithmetic", lambda split, i: generate_problem(config, seeds[split], i, split),
                            train_size, test_size)


def reasoning_gym_source(dataset: str, options: Mapping[str, Any], train_seed: int, test_seed: int,
                         train_size: int, test_size: int,
                         delimiter: str = DEFAULT_DELIMITER) -> ProblemSource:
    """A reasoning-gym dataset by name. Its item ``i`` is drawn from ``Random(seed + i)``, so the
    seed windows ``[seed, seed + size·attempts)`` of the two splits must not overlap (checked in
    ``TaskSpec``); questions are also deduplicated across splits as for every generator."""
    seeds = {"train": train_seed, "test": test_seed}
    sizes = {"train": train_size * MAX_DEDUPE_ATTEMPTS, "test": test_size}
    datasets = {split: reasoning_gym_dataset(dataset, options, seeds[split], sizes[split])
                for split in SPLITS}

    def generate(split: str, index: int) -> Problem:
        entry = datasets[split][index]
        answer = str(entry["answer"])
        return Problem(id=f"rg-{dataset}-{split}-{seeds[split]}-{index}", question=str(entry["question"]),
                       answer=answer, solution=_cot_solution(entry, answer, delimiter),
                       meta={"entry": entry, "source": "reasoning_gym"})

    return generator_source(f"reasoning_gym:{dataset}", generate, train_size, test_size)


def reasoning_gym_dataset(name: str, options: Mapping[str, Any], seed: int, size: int):
    """``reasoning_gym.create_dataset`` with typed errors for unknown names and rejected options."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise TaskSpecError(f"field 'source.dataset' must be a reasoning-gym dataset name, got "
                            f"{describe(name)}.{suggest(name, DATASETS)}")
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **dict(options))
    except (TypeError, ValueError, AssertionError) as e:
        raise TaskSpecError(f"field 'source.options' must be options that reasoning-gym's {name!r} accepts, "
                            f"got {describe(dict(options))}: {e}") from e


def _cot_solution(entry: Mapping[str, Any], answer: str, delimiter: str) -> tuple[str, ...] | None:
    """Segments of a dataset's own worked solution (``metadata.answer_cot``), ending with the box."""
    cot = entry.get("metadata", {}).get("answer_cot")
    if not isinstance(cot, str) or not cot.strip():
        return None
    # Worked answers use blank lines between steps, or one step per line when they have none.
    pieces = cot.split("\n\n") if "\n\n" in cot.strip() else cot.split("\n")
    paragraphs = [p.split("\n####")[0].strip() for p in pieces]
    paragraphs = [p for p in paragraphs if p and not p.startswith("####")]
    final = f"The answer is {DEFAULT_ANSWER_TEMPLATE.format(answer=answer)}."
    return tuple(p + delimiter for p in (*paragraphs, final))


# ---------------------------------------------------------------------------------------------
# Finite sources: records (dicts) from a JSONL file, a Hugging Face dataset or the YAML itself.


@dataclass(frozen=True)
class RecordFields:
    """Which keys of a record hold what; the YAML keys of the finite source kinds (``sources.py``)."""

    question_field: str = "question"
    """Record key of the question."""
    answer_field: str = "answer"
    """Record key of the ground-truth answer."""
    solution_field: str = ""
    """Record key of a reference solution (list of segments or one string); empty: none."""
    id_field: str = ""
    """Record key of a stable problem id; empty: ``<source>-<record number>``."""
    split_field: str = ""
    """Record key whose value (``train``/``test``) assigns the split; empty: seeded partition."""

    def __post_init__(self) -> None:
        check(bool(self.question_field) and bool(self.answer_field), "question_field",
              (self.question_field, self.answer_field), "non-empty record keys", TaskSpecError)


def record_to_problem(record: Mapping[str, Any], fields: RecordFields, where: str, default_id: str,
                      delimiter: str = DEFAULT_DELIMITER) -> Problem:
    """A :class:`Problem` from one record; ``where`` (``file:line``) locates errors."""
    for key in (fields.question_field, fields.answer_field):
        if key not in record:
            raise TaskSpecError(f"{where}: record has no field '{key}'.{suggest(key, map(str, record))} "
                                f"Fields: {', '.join(map(str, record))}; set 'source.question_field' / "
                                "'source.answer_field' to the right keys")
    solution = record.get(fields.solution_field) if fields.solution_field else None
    if isinstance(solution, str):
        solution = [s for s in solution.split(delimiter) if s.strip()]
    if solution is not None:
        if not isinstance(solution, list | tuple) or not all(isinstance(s, str) for s in solution):
            raise TaskSpecError(f"{where}: field '{fields.solution_field}' must be a string or a list of strings, "
                                f"got {describe(solution)}")
        solution = tuple(s if s.endswith(delimiter) else s + delimiter for s in solution)
    used = (fields.question_field, fields.answer_field, fields.solution_field)
    meta = {k: v for k, v in record.items() if k not in used}
    return Problem(id=str(record[fields.id_field]) if fields.id_field and fields.id_field in record else default_id,
                   question=record_text(record, fields.question_field, where, numbers=False),
                   answer=record_text(record, fields.answer_field, where, numbers=True),
                   solution=solution, meta=meta)


def plain_decimal(value: float) -> str:
    """A finite float as a person writes it, never in scientific notation: its shortest round-trip
    digits in plain decimal. ``72.0`` → ``"72"``, ``5e-05`` → ``"0.00005"``, ``1e-07`` →
    ``"0.0000001"``, ``1e+22`` → ``"10000000000000000000000"``, ``-0.0`` → ``"0"``."""
    if value == 0:
        return "0"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def record_text(record: Mapping[str, Any], key: str, where: str, *, numbers: bool) -> str:
    """A record's question or answer as text. ``null``, ``""``, lists and mappings are errors: as
    strings they would become questions like "None" and answers that ``\\boxed{None}`` matches. A
    number answer is written in plain decimal (:func:`plain_decimal`): ``5e-05`` would verify
    against nothing a model writes."""
    value = record[key]
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if numbers and isinstance(value, float) and math.isfinite(value):
        return plain_decimal(value)
    if not isinstance(value, str) or not value.strip():
        expected = "a non-empty string" + (" or a finite number" if numbers else "")
        raise TaskSpecError(f"{where}: field '{key}' must be {expected}, got {describe(value)}")
    return value


def json_error(e: ValueError) -> str:
    """What ``json.loads`` refused: its message and column, or Python's own limit (an integer of
    more than 4300 digits is a ``ValueError``, not a ``JSONDecodeError``)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}"
    return str(e).split(";")[0]


def read_jsonl(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, record)`` for every non-blank line; a bad line is a located ``TaskSpecError``."""
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskSpecError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the "
                                    "line); a JSONL file holds one JSON object per line") from e
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or an integer literal of more than 4300 digits
                raise TaskSpecError(f"{path}:{lineno}: invalid JSON ({json_error(e)})") from e
            if not isinstance(record, dict):
                raise TaskSpecError(f"{path}:{lineno}: a record must be a JSON object, "
                                    f"got {describe(record)}")
            records.append((f"{path}:{lineno}", record))
    return records


def read_hf_dataset(path: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Records of a local Hugging Face dataset: a ``save_to_disk`` directory, a directory of data
    files, or a dataset already in the local cache. The hub is never contacted (offline mode)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise TaskSpecError("source kind 'hf_dataset' needs the datasets package: "
                            "pip install 'repro-env[datasets]'") from e
    local = Path(path)
    try:
        if local.is_dir() and any((local / f).is_file() for f in ("dataset_info.json", "dataset_dict.json",
                                                                  "state.json")):
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise TaskSpecError(f"field 'source.hf_split' must be one of {', '.join(data)} for "
                                        f"{path}, got {describe(split)}.{suggest(split, data)}")
                data = data[split]
        else:
            data = datasets.load_dataset(str(path), split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise TaskSpecError(f"field 'source.path' must be a local Hugging Face dataset (a save_to_disk "
                            f"directory, data files or a cached dataset), got {describe(path)}: {e}") from e
    return [(f"{path}[{split}][{i}]", dict(row)) for i, row in enumerate(data)]


def record_source(name: str, load: Callable[[], list[tuple[str, dict[str, Any]]]],
                  load_test: Callable[[], list[tuple[str, dict[str, Any]]]] | None, fields: RecordFields,
                  *, test_fraction: float, partition_seed: int, train_size: int | None,
                  test_size: int | None, delimiter: str = DEFAULT_DELIMITER) -> ProblemSource:
    """A finite source. Splits come from ``load_test`` (a separate file), the ``fields.split_field`` key, or
    a seeded partition: shuffle the record numbers with ``Random(partition_seed)``, and the first
    ``round(n · test_fraction)`` go to test. ``train_size`` / ``test_size`` cap each split."""

    @lru_cache(maxsize=1)
    def splits() -> dict[str, list[Problem]]:
        records = load()
        problems = [record_to_problem(r, fields, where, f"{name}-{i}", delimiter)
                    for i, (where, r) in enumerate(records)]
        if load_test is not None:
            test = [record_to_problem(r, fields, where, f"{name}-test-{i}", delimiter)
                    for i, (where, r) in enumerate(load_test())]
            out = {"train": problems, "test": test}
        elif fields.split_field:
            out = {"train": [], "test": []}
            for (where, record), problem in zip(records, problems, strict=True):
                value = record.get(fields.split_field)
                if value not in SPLITS:
                    raise TaskSpecError(f"{where}: field '{fields.split_field}' must be 'train' or 'test', got "
                                        f"{describe(value)}")
                out[value].append(problem)
        else:
            order = list(range(len(problems)))
            random.Random(partition_seed).shuffle(order)
            n_test = round(len(problems) * test_fraction)
            out = {"test": [problems[i] for i in sorted(order[:n_test])],
                   "train": [problems[i] for i in sorted(order[n_test:])]}
        for split, cap in (("train", train_size), ("test", test_size)):
            out[split] = out[split][:cap] if cap is not None else out[split]
            if not out[split]:
                raise TaskSpecError(f"{name}: the {split} split is empty ({len(problems)} records); add "
                                    "records or change 'splits.test_fraction' / the split field")
        return out

    train = ProblemSet(f"{name}/train", lambda: len(splits()["train"]), lambda i: splits()["train"][i])
    test = ProblemSet(f"{name}/test", lambda: len(splits()["test"]), lambda i: splits()["test"][i])
    return ProblemSource(name, train, test)
