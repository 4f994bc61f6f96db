"""Problems: the unit a task draws from. Sources (generators, JSONL, HF datasets, inline) live here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\n\n"
"""What the policy sees; the reasoning segments follow it directly."""
DEFAULT_ANSWER_TEMPLATE = "\\boxed{{{answer}}}"
"""The answer string ``a`` whose mean log-prob is J (REPRO_SPEC §1); ``{answer}`` is filled in."""
DEFAULT_DELIMITER = "\n\n"


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
