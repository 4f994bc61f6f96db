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


class SegmentMarker:
    """The marks of a response one segment at a time, in order: :func:`mark_segments` on the whole
    response, the env on each step (O(segment) per step, not O(trace)).

    ``final_answer``: the task's final-answer regex (the first matching segment and all after it are
    not reasoning, as :func:`repro_env.segments.reasoning_length` counts), or ``None`` when every
    segment is reasoning (the think part of a ``</think>`` response, §1).
    """

    def __init__(self, answer: str = "", *, location: AnswerLocation = "none",
                 is_backtrack: Callable[[str], bool], final_answer: re.Pattern[str] | None = None) -> None:
        self.answer, self.location, self.is_backtrack, self.final_answer = answer, location, is_backtrack, final_answer
        self.seen: set[tuple[int, str, int]] = set()
        """Every ``a op b`` written so far."""
        self.reasoning = True
        """No final-answer segment yet: the next segment is reasoning unless it states the answer."""
        self.answer_stated: bool | None = None if location == "none" else False
        """The reasoning so far states the gold answer (``None``: the task cannot locate it)."""

    def mark(self, segment: str) -> tuple[bool, bool | None]:
        """(overthinking, after_answer) of the next segment; ``after_answer`` is ``None`` when the task
        cannot locate the answer."""
        repeated = False
        for _, a, op, b, _ in solution_steps([segment]):
            repeated = repeated or (a, op, b) in self.seen
            self.seen.add((a, op, b))
        overthinking = repeated or bool(self.is_backtrack(segment))
        if self.answer_stated is None:
            return overthinking, None
        self.reasoning = self.reasoning and (self.final_answer is None or not self.final_answer.search(segment))
        after = self.answer_stated and self.reasoning
        self.answer_stated = self.answer_stated or (self.reasoning and states_answer(segment, self.answer,
                                                                                     self.location))
        return overthinking, after


def overthinking_segments(segments: Sequence[str], is_backtrack: Callable[[str], bool]) -> list[bool]:
    """(T,) per segment: a backtrack, or a repeat of an ``a op b`` computation written before it."""
    marker = SegmentMarker(is_backtrack=is_backtrack)
    return [marker.mark(segment)[0] for segment in segments]


def states_answer(segment: str, answer: str, location: AnswerLocation) -> bool:
    """Whether ``segment`` states the gold ``answer`` under the task's convention (module docstring)."""
    if location == "none":
        return False
    return any(_same_number(c, answer) for *_, c in solution_steps([segment]))


def mark_segments(segments: Sequence[str], answer: str, *, location: AnswerLocation,
                  is_backtrack: Callable[[str], bool], final_answer: re.Pattern[str] | None) -> SegmentMarks:
    """The :class:`SegmentMarks` of a response (``final_answer`` as in :class:`SegmentMarker`)."""
    marker = SegmentMarker(answer, location=location, is_backtrack=is_backtrack, final_answer=final_answer)
    marks = [marker.mark(segment) for segment in segments]
    overthinking = tuple(o for o, _ in marks)
    if marker.answer_stated is None:
        return SegmentMarks(overthinking, None, None)
    return SegmentMarks(overthinking, tuple(bool(a) for _, a in marks), marker.answer_stated)


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
