"""Overthinking measures of one response, defined once for the env, the trainers, ``repro-env score``
and the pretraining evaluation.

A response is a list of segments (REPRO_SPEC §1). Two per-segment marks:

- **overthinking segment**: it is a backtrack (the task's backtrack patterns, REPRO_SPEC §6) or it
  repeats an ``a op b`` computation already written earlier in the response (in an earlier
  segment or earlier in the same one; ``3 * 5`` and ``5 * 3`` are different computations);
- **after the answer**: it is reasoning written after the first segment at whose end the gold
  answer has already been stated. The final-answer segment (the task's ``final_answer_pattern``)
  is not reasoning (REPRO_SPEC §4: the reasoning ends before it), so it is never after the answer
  and never states it.

Where the gold answer is stated depends on the task (``TaskSpec.answer_location``):

- ``step_result`` (the arithmetic tasks): a reasoning segment states the answer when one of its
  ``a op b = c`` steps has ``c`` equal to the answer (as numbers). An intermediate result that
  happens to equal the answer counts too: the measure cannot tell it from the last step;
- ``none``: the answer cannot be located inside the reasoning, and the measure is not reported
  (``None``, never 0).

From the marks and the tokens of each segment, one response's figures (:func:`response_figures`)::

    tokens_after_first_correct = Σ tokens of the segments after the answer     (None: not stated, or
                                                                                 the task cannot locate it)
    overthinking               = 1 if any segment is an overthinking segment, else 0
    overthinking_segments      = number of overthinking segments
    overthinking_tokens        = Σ tokens of the overthinking segments

``tokens_after_first_correct`` is the efficient-reasoning literature's "outcome efficiency" count
(tokens spent after the first correct answer). A response whose final answer is wrong but whose
reasoning stated the gold answer on the way still has it: the tokens after were spent all the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from repro_env.arithmetic import solution_steps
from repro_env.errors import ConfigError
from repro_env.segments import reasoning_length

AnswerLocation = Literal["step_result", "none"]
ANSWER_LOCATIONS: tuple[AnswerLocation, ...] = ("step_result", "none")
FIGURE_KEYS = ("tokens_after_first_correct", "overthinking", "overthinking_segments", "overthinking_tokens")
"""The keys of :func:`response_figures`, in order."""


@dataclass(frozen=True)
class SegmentMarks:
    """The per-segment marks of one response (module docstring)."""

    overthinking: tuple[bool, ...]
    """(T,) the segment is a backtrack or repeats an earlier computation."""
    after_answer: tuple[bool, ...] | None
    """(T,) the segment is reasoning written after the first segment that stated the gold answer;
    ``None`` when the task cannot locate the answer."""
    answer_stated: bool | None
    """The reasoning states the gold answer somewhere; ``None`` when the task cannot locate it."""


def overthinking_segments(segments: Sequence[str], is_backtrack: Callable[[str], bool]) -> list[bool]:
    """(T,) per segment: a backtrack, or a repeat of an ``a op b`` computation written before it."""
    seen: set[tuple[int, str, int]] = set()
    marks = []
    for segment in segments:
        repeated = False
        for _, a, op, b, _ in solution_steps([segment]):
            repeated = repeated or (a, op, b) in seen
            seen.add((a, op, b))
        marks.append(repeated or bool(is_backtrack(segment)))
    return marks


def states_answer(segment: str, answer: str, location: AnswerLocation) -> bool:
    """Whether ``segment`` states the gold ``answer`` under the task's convention (module docstring)."""
    if location == "none":
        return False
    return any(_same_number(c, answer) for *_, c in solution_steps([segment]))


def mark_segments(segments: Sequence[str], answer: str, *, location: AnswerLocation,
                  is_backtrack: Callable[[str], bool], final_answer: re.Pattern[str] | None) -> SegmentMarks:
    """The :class:`SegmentMarks` of a response.

    ``final_answer``: the task's final-answer regex (the first matching segment and all after it are
    not reasoning, :func:`repro_env.segments.reasoning_length`), or
    ``None`` when every segment is reasoning (the think part of a ``</think>`` response, §1).
    """
    overthinking = tuple(overthinking_segments(segments, is_backtrack))
    if location == "none":
        return SegmentMarks(overthinking, None, None)
    reasoning_end = len(segments) if final_answer is None else reasoning_length(segments, final_answer)
    stated, after = False, []
    for t, segment in enumerate(segments):
        reasoning = t < reasoning_end  # REPRO_SPEC §4: the final-answer segment and all after it are not
        after.append(stated and reasoning)
        stated = stated or (reasoning and states_answer(segment, answer, location))
    return SegmentMarks(overthinking, tuple(after), stated)


def response_figures(marks: SegmentMarks, tokens: Sequence[int]) -> dict[str, float | None]:
    """One response's figures (module docstring) from its marks and ``tokens`` per segment, (T,)."""
    if len(tokens) != len(marks.overthinking):
        raise ConfigError(f"field 'tokens' must hold one count per segment ({len(marks.overthinking)}), got "
                          f"{len(tokens)} counts")
    after = None
    if marks.answer_stated:
        after = float(sum(n for n, a in zip(tokens, marks.after_answer, strict=True) if a))
    return {
        "tokens_after_first_correct": after,
        "overthinking": float(any(marks.overthinking)),
        "overthinking_segments": float(sum(marks.overthinking)),
        "overthinking_tokens": float(sum(n for n, o in zip(tokens, marks.overthinking, strict=True) if o)),
    }


def _same_number(value: str, answer: str) -> bool:
    try:
        return float(value) == float(answer.replace(",", "").strip())
    except ValueError:
        return value == answer.strip()
