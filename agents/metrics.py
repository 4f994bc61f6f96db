"""Per-update metrics of a run as JSON lines and CSV, and the end-of-run summary table.

A run directory holds two streams, each as ``NAME.jsonl`` (the record) and ``NAME.csv`` (the same
rows for spreadsheets): ``metrics`` (one row per update: the learner's metrics plus the trainer's
timings) and ``eval`` (one row per held-out evaluation). The JSONL file is appended and flushed
row by row; the CSV is appended while the columns stay the same and rewritten from the JSONL when a
new column appears. On resume, rows past the checkpoint's update are dropped first, so a resumed
run's files read as if the run had never stopped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from repro_env.errors import TrainingError

# Keys a learner's ``update`` metrics should use so plots and the summary find them.
STANDARD_KEYS = (
    "accuracy", "outcome_reward", "process_reward", "process_return", "tokens_per_response",
    "backtracks_per_response", "overthinking", "overthinking_segments", "overthinking_tokens",
    "tokens_after_first_correct", "kl", "entropy", "loss", "policy_loss", "pg_loss", "value_loss",
    "generation_tokens_per_s", "scoring_tokens_per_s", "collect_seconds", "update_seconds",
)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become strings so the JSONL stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return _plain(value.item())
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (empty when the file is absent); a torn last line is skipped."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # killed mid-write: the row was never complete
                continue
            raise TrainingError(f"{path}:{i + 1}: corrupt metrics row ({e})") from e
    return rows


class MetricsLog:
    """Append-only JSONL + CSV rows for one stream (``metrics`` or ``eval``) of a run directory."""

    def __init__(self, run_dir: Path, name: str):
        self.jsonl = run_dir / f"{name}.jsonl"
        self.csv = run_dir / f"{name}.csv"
        self.rows = read_jsonl(self.jsonl)
        self.columns: list[str] = self._columns(self.rows)

    @staticmethod
    def _columns(rows: list[dict[str, Any]]) -> list[str]:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        return columns

    def truncate_after(self, update: int) -> None:
        """Drop rows with ``update`` > the given one (a resume re-runs them) and rewrite both files."""
        self.rows = [r for r in self.rows if r.get("update", 0) <= update]
        self.columns = self._columns(self.rows)
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        new = [k for k in row if k not in self.columns]
        if new or not self.csv.is_file():
            self.columns += new
            self._write_csv()
        else:
            with self.csv.open("a", encoding="utf-8", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        with self.jsonl.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        self._write_csv()

    def _write_csv(self) -> None:
        with self.csv.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


TRAINING_WINDOW = 5
"""The summary's training table compares the means of the first and of the last this many updates
(half the run when it is shorter), not two single batches."""


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    return sum(values) / len(values) if values else None


def _change(a: Any, b: Any) -> str:
    return f"{b - a:+.4g}" if isinstance(a, int | float) and isinstance(b, int | float) else "-"


def summary_table(run_dir: Path) -> str:
    """Markdown: first vs last evaluation (greedy and avg@n), the mean of the first vs the last few
    training updates, and the example response of the first and the last evaluation."""
    lines = [f"# Run summary: {run_dir.name}", ""]
    evals = read_jsonl(run_dir / "eval.jsonl")
    if evals:
        first, last = evals[0], evals[-1]
        keys = [k for k in last if k not in ("update", "time") and isinstance(last[k], int | float)]
        lines += [f"## Held-out evaluation (update {first['update']} → {last['update']})", "",
                  "| metric | first | last | change |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(first.get(k))} | {_fmt(last[k])} | {_change(first.get(k), last[k])} |"
                  for k in keys]
        lines.append("")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if rows:
        n = max(1, min(TRAINING_WINDOW, len(rows) // 2))
        head, tail = rows[:n], rows[-n:]
        spans = [f"{part[0]['update']}" if n == 1 else f"{part[0]['update']}-{part[-1]['update']}"
                 for part in (head, tail)]
        keys = [k for k in STANDARD_KEYS if k in rows[-1]]
        lines += [f"## Training (mean of updates {spans[0]} → mean of updates {spans[1]})", "",
                  f"| metric | updates {spans[0]} | updates {spans[1]} | change |", "|---|---|---|---|"]
        for k in keys:
            a, b = _mean(head, k), _mean(tail, k)
            lines.append(f"| {k} | {_fmt(a)} | {_fmt(b)} | {_change(a, b)} |")
        lines.append("")
    examples = read_jsonl(run_dir / "examples.jsonl")
    if examples:
        lines += [f"## Example: the greedy response to test problem {examples[0]['problem']}", ""]
        for e in examples[:1] + examples[1:][-1:]:
            verdict = "correct" if e["correct"] else "wrong"
            lines += [f"Update {e['update']} ({verdict}, {e['tokens']} tokens):", "", "```", e["text"].strip(),
                      "```", ""]
    if len(lines) == 2:
        lines.append("No metrics recorded yet.")
    return "\n".join(lines) + "\n"
