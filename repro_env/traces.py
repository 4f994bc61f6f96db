"""The lines of a traces file → :class:`TraceLine`, ready to score (``repro-env score``).

One JSON object per line: a question, the reasoning or the full response (a string, or a list of
segments) and the gold answer, under the field names of :class:`TraceFields`. The response is split
by ``TaskSpec.split_response``, the rule the env and the TRL trainer share (module docstring of
:mod:`repro_env.diagnostics`). A bad line is a :class:`TraceInputError` naming the file, the line
and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_env.config import describe
from repro_env.errors import ConfigError, TaskSpecError, TraceInputError
from repro_env.problems import json_error, record_text
from repro_env.spaces import LONE_SURROGATE
from repro_env.tasks import TaskSpec
from repro_env.verify import extract_answer, final_part

RESPONSE_FIELDS = ("response", "reasoning", "solution", "completion", "output")
"""Tried in this order when :attr:`TraceFields.response` is not set."""


@dataclass(frozen=True)
class TraceFields:
    """Where each part of a trace is in a line's JSON object."""

    question: str = "question"
    """The question, rendered through the task's ``prompt_template`` (unless ``template`` is off)."""
    response: str | None = None
    """The reasoning or the full response (a string, or a list of segments); ``None``: the first of
    ``response``, ``reasoning``, ``solution``, ``completion``, ``output`` that the line has."""
    answer: str = "answer"
    """The gold answer (a string or a number), rendered through the task's ``answer_template`` for J."""
    id: str = "id"
    """An id for the tables and the report (optional; default ``line-N``)."""
    template: bool = True
    """Render the question through the task's prompt template; off: the field is the whole prompt."""

    def __post_init__(self) -> None:
        for name in ("question", "answer", "id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"field '{name}' must be a non-empty field name, got {value!r}")
        if self.response is not None and (not isinstance(self.response, str) or not self.response):
            raise ConfigError(f"field 'response' must be a non-empty field name or None, got {self.response!r}")


@dataclass(frozen=True)
class TraceLine:
    """One parsed line, ready to score."""

    line: int
    id: str
    question: str
    """The question as the file gives it."""
    prefix: str
    """What J conditions on before τ: the rendered prompt, plus the text up to ``<think>``."""
    segments: tuple[str, ...]
    gold: str
    answer: str
    """``a``: the gold answer through the task's answer template."""
    response: str
    """The whole response, for verification."""
    think: bool
    """The response had a ``</think>`` block and τ is its think part."""
    reasoning: int
    """How many leading segments are reasoning, the scored ones: all of a think block; without one,
    those before the segment that states the final answer (REPRO_SPEC §4)."""
    response_field: str = "response"
    """The field the response came from (named in errors)."""
    tokens: tuple[int, ...] = ()
    """(T,) tokens of each segment."""


class TraceReader:
    """Parses the lines of a traces file into :class:`TraceLine` (or raises :class:`TraceInputError`)."""

    def __init__(self, task: TaskSpec, fields: TraceFields, where: str, *, max_chars: int | None = None) -> None:
        if task.verifier.kind == "reasoning_gym":
            raise ConfigError(f"task {task.id}: verifier 'reasoning_gym' needs the dataset's entries; "
                              "score traces with a task whose verifier.kind is 'math' or 'exact'")
        self.task, self.fields, self.where = task, fields, where
        self.max_chars = max_chars
        """Prompts + responses longer than this cannot fit the scorer's context, whatever their
        tokens: refused before any other work (a 10 MB line took 15 s to tokenise)."""

    def error(self, line: int, name: str, message: str) -> TraceInputError:
        return TraceInputError(f"{self.where}:{line}: {message} (or pass --skip-bad to skip such lines)",
                               line=line, field=name)

    def parse(self, line: int, raw: bytes | str) -> TraceLine:
        """One line (bytes as read from the file) → a :class:`TraceLine`."""
        if not isinstance(raw, bytes | str):
            raise self.error(line, "", f"a trace must be a dict (one per trace) or a JSON line, got "
                             f"{describe(raw, 60)}")
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise self.error(line, "", f"the line is not valid UTF-8 (byte {raw[e.start]:#04x} at byte "
                                 f"{e.start}); re-encode the file as UTF-8") from e
        try:
            record = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, or an integer literal of more than 4300 digits
            raise self.error(line, "", f"the line is not valid JSON ({json_error(e)})") from e
        except RecursionError as e:
            raise self.error(line, "", "the line nests JSON arrays or objects too deeply to read") from e
        if not isinstance(record, Mapping):
            raise self.error(line, "", f"the line must be a JSON object, got {type(record).__name__}")
        return self.from_record(line, record)

    def from_record(self, line: int, record: Mapping[str, Any]) -> TraceLine:
        f, task = self.fields, self.task
        question = self._text(line, record, f.question)
        gold = self._answer(line, record)
        name, response = self._response(line, record)
        prompt = task.prompt_template.format(question=question) if f.template else question
        chars = len(prompt) + sum(map(len, [response] if isinstance(response, str) else response))
        if self.max_chars is not None and chars > self.max_chars:
            raise self.error(line, name, f"the trace is too long: {chars} characters of prompt and response, more "
                             f"than the scorer's context can hold in any tokenisation (at most {self.max_chars}); "
                             "shorten it or score with a model of a longer context")
        split = task.split_response(prompt, response)
        segments, prefix = split.segments + split.after, split.prefix
        if not isinstance(response, str):
            response = "".join(segments)
        if not any(s.strip() for s in segments):
            raise self.error(line, name, f"field '{name}' has no reasoning to score (empty"
                             f"{' think block' if split.think else ''})")
        pattern = task.final_answer_pattern if task.final_answer_regex.groups else None
        if extract_answer(final_part(response), pattern) is None and not task.final_answer_regex.search(response):
            raise self.error(line, name, f"field '{name}' states no final answer (no \\boxed{{...}}, "
                             f"'answer is ...' or match of the task's final_answer_pattern "
                             f"{task.final_answer_pattern!r}); a truncated trace cannot be verified")
        trace_id = record.get(f.id)
        return TraceLine(line=line, id=str(trace_id) if trace_id not in (None, "") else f"line-{line}",
                         question=question, prefix=prefix, segments=tuple(segments), gold=gold,
                         answer=task.answer_template.format(answer=gold), response=response,
                         think=split.think, reasoning=len(split.segments), response_field=name)

    def _text(self, line: int, record: Mapping[str, Any], name: str) -> str:
        if name not in record:
            raise self.error(line, name, f"field '{name}' is missing; the line has {_keys(record)}")
        value = record[name]
        if not isinstance(value, str) or not value.strip():
            raise self.error(line, name, f"field '{name}' must be a non-empty string, got {describe(value, 60)}")
        return self._unicode(line, name, value)

    def _unicode(self, line: int, name: str, text: str) -> str:
        """``text`` with CRLF line ends as ``\\n`` (a CRLF file would be one segment); a lone surrogate
        (``"\\ud800"`` in the JSON) is bad input, not text any tokenizer can take."""
        surrogate = LONE_SURROGATE.search(text)
        if surrogate:
            raise self.error(line, name, f"field '{name}' is not valid unicode text: a lone surrogate "
                             f"{surrogate.group()!r} at index {surrogate.start()}")
        return text.replace("\r\n", "\n")

    def _answer(self, line: int, record: Mapping[str, Any]) -> str:
        name = self.fields.answer
        if name not in record:
            raise self.error(line, name, f"field '{name}' is missing; the line has {_keys(record)} "
                             "(pass --answer-field NAME)")
        try:  # the rule of task sources: 72.0 is "72", as the env renders it; null, NaN and lists are errors
            return self._unicode(line, name, record_text(record, name, f"line {line}", numbers=True).strip())
        except TaskSpecError as e:
            raise self.error(line, name, f"field '{name}' must be a non-empty string or a finite number, got "
                             f"{describe(record[name], 60)}") from e

    def _response(self, line: int, record: Mapping[str, Any]) -> tuple[str, str | list[str]]:
        names = (self.fields.response,) if self.fields.response else RESPONSE_FIELDS
        name = next((n for n in names if n in record), None)
        if name is None:
            tried = f"'{names[0]}'" if len(names) == 1 else "any of " + ", ".join(f"'{n}'" for n in names)
            raise self.error(line, names[0], f"field {tried} is missing; the line has {_keys(record)} "
                             "(pass --response-field NAME)")
        value = record[name]
        if isinstance(value, list) and value and all(isinstance(s, str) for s in value):
            empty = next((i for i, s in enumerate(value) if not s.strip()), None)
            if empty is not None:  # env.step refuses a whitespace-only segment
                raise self.error(line, name, f"field '{name}' item {empty} is {value[empty]!r}: every segment "
                                 "needs some text")
            return name, [self._unicode(line, name, s) for s in value]
        if not isinstance(value, str) or not value.strip():
            raise self.error(line, name, f"field '{name}' must be a non-empty string or a list of strings, "
                             f"got {describe(value, 60)}")
        return name, self._unicode(line, name, value)


def _keys(record: Mapping[str, Any]) -> str:
    return ", ".join(f"'{k}'" for k in list(record)[:12]) or "no keys"


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of each non-blank line, read lazily."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                yield number, raw
