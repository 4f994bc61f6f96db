"""``repro-env score``'s summary of many traces, its terminal table and its CSV rows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

TRACE_CSV_COLUMNS = ("line", "id", "correct", "J_0", "J_gain", "process_return", "backtracks", "overthinking",
                     "tokens_after_first_correct")
CSV_COLUMNS = (*TRACE_CSV_COLUMNS, "t", "scored", "J", "S_magn", "S_stab", "S", "r", "backtrack",
               "overthinking_segment", "after_answer", "tokens", "entropy", "text")


@dataclass
class Summary:
    """Running totals over the scored traces (nothing per trace is kept)."""

    traces: int = 0
    skipped: int = 0
    segments: int = 0
    scored_segments: int = 0
    negative_segments: int = 0
    backtracks: int = 0
    correct: int = 0
    J_gain: float = 0.0
    process_return: float = 0.0
    overthinking: int = 0
    overthinking_tokens: int = 0
    tokens_after: int = 0
    """Σ tokens after the first correct answer, over the ``answer_located`` traces."""
    answer_located: int = 0
    """Traces whose reasoning states the gold answer (where ``tokens_after_first_correct`` applies)."""
    answer_location: str = "none"
    """The task's ``answer_location``: ``none`` means no trace can have the tokens-after figure."""
    seconds: float = 0.0

    def add(self, row: Mapping[str, Any]) -> None:
        self.traces += 1
        self.segments += row["num_segments"]
        self.scored_segments += row["scored_segments"]
        self.negative_segments += row["negative_rewards"]
        self.backtracks += row["backtracks"]
        self.correct += row["correct"]
        self.J_gain += row["J_gain"]
        self.process_return += row["process_return"]
        self.overthinking += row["overthinking"]
        self.overthinking_tokens += row["overthinking_tokens"]
        if row["tokens_after_first_correct"] is not None:
            self.answer_located += 1
            self.tokens_after += row["tokens_after_first_correct"]

    def as_dict(self) -> dict[str, Any]:
        n = max(self.traces, 1)
        return {"traces": self.traces, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "traces_per_s": self.traces / self.seconds if self.seconds > 0 else None,
                "mean_J_gain": self.J_gain / n, "mean_process_return": self.process_return / n,
                "backtracks_per_trace": self.backtracks / n, "accuracy": self.correct / n,
                "segments_per_trace": self.segments / n,
                "negative_reward_share": self.negative_segments / max(self.scored_segments, 1),
                "overthinking_share": self.overthinking / n,
                "overthinking_tokens_per_trace": self.overthinking_tokens / n,
                "mean_tokens_after_first_correct": (self.tokens_after / self.answer_located
                                                    if self.answer_located else None),
                "traces_with_answer_located": self.answer_located, "answer_location": self.answer_location}


def csv_rows(row: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One CSV row per segment, the trace's columns repeated (the segment's ``overthinking`` flag is
    the column ``overthinking_segment``; ``overthinking`` is the trace's)."""
    head = {k: _csv_safe(row[k]) for k in TRACE_CSV_COLUMNS}
    for segment in row["segments"]:
        cells = {k: _csv_safe(segment[k]) for k in CSV_COLUMNS[len(TRACE_CSV_COLUMNS):] if k in segment}
        yield {**head, **cells, "overthinking_segment": segment["overthinking"]}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a text cell that starts with one of these as a formula (OWASP, CSV injection)."""


def _csv_safe(value: Any) -> Any:
    """A text cell that would start a formula gets a leading ``'``, so that spreadsheets show it as
    text (OWASP's advice on CSV injection); numbers and other cells are kept."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escapes, newlines) written as escapes, for the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_tokens_after(summary: Mapping[str, Any]) -> str:
    """The mean tokens after the first correct answer, or "n/a" and why (never a made-up 0)."""
    mean = summary["mean_tokens_after_first_correct"]
    if summary["answer_location"] == "none":
        return "n/a (the task cannot locate the answer in the reasoning: answer_location none)"
    if mean is None:
        return "n/a (no trace states the gold answer in its reasoning)"
    return f"{mean:.1f} (over the {summary['traces_with_answer_located']} traces that state the answer)"


def format_summary(summary: Mapping[str, Any], worst: list[Mapping[str, Any]], limit: int = 10) -> str:
    """The terminal table: the means, then the worst traces by process return."""
    rate = summary["traces_per_s"]
    lines = [f"scored {summary['traces']} traces ({summary['skipped']} skipped) in {summary['seconds']:.1f} s"
             + (f": {rate:.1f} traces/s" if rate else ""),
             f"  mean J gain (J_T - J_0)        {summary['mean_J_gain']:+.4f}",
             f"  mean process return (S_T)      {summary['mean_process_return']:+.4f}",
             f"  backtracks per trace           {summary['backtracks_per_trace']:.2f}",
             f"  segments with negative r~      {100 * summary['negative_reward_share']:.1f}%",
             f"  accuracy (answer verifies)     {100 * summary['accuracy']:.1f}%",
             f"  with an overthinking segment   {100 * summary['overthinking_share']:.1f}%",
             f"  tokens after first correct    {format_tokens_after(summary)}"]
    if worst:
        lines += ["", f"  worst {min(limit, len(worst))} by process return:",
                  f"  {'line':>5} {'id':<28} {'segs':>4} {'J gain':>8} {'return':>8} {'bt':>3} {'r~<0':>4} correct"]
        for row in worst[:limit]:
            lines.append(f"  {row['line']:>5} {printable(str(row['id']))[-28:]:<28} {row['num_segments']:>4} "
                         f"{row['J_gain']:>+8.4f} {row['process_return']:>+8.4f} {row['backtracks']:>3} "
                         f"{row['negative_rewards']:>4} {row['correct']}")
    return "\n".join(lines)
