"""Curves and a table of the pilot runs (benchmarks/pilot_overthinker.sh): held-out metrics against
the update number, one line per run, and the seconds per update.

    python benchmarks/plot_pilot.py runs/pilot        → runs/pilot/pilot.png, runs/pilot/pilot.md
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from repro_env.agents.metrics import read_jsonl

PANELS = [("accuracy", "accuracy"), ("tokens_per_response", "tokens per response"),
          ("backtracks_per_response", "backtracks per response"),
          ("tokens_after_first_correct", "tokens after the first correct answer")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    runs = {d.name: d for d in sorted(out.iterdir()) if (d / "eval.jsonl").is_file()}
    evals = {name: read_jsonl(d / "eval.jsonl") for name, d in runs.items()}
    metrics = {name: read_jsonl(d / "metrics.jsonl") for name, d in runs.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PANELS), figsize=(4.2 * len(PANELS), 7), squeeze=False)
    for row, mode in enumerate(("greedy", "sampled")):
        for col, (key, label) in enumerate(PANELS):
            ax = axes[row][col]
            for name, rows in evals.items():
                points = [(r["update"], r[f"{mode}_{key}"]) for r in rows if f"{mode}_{key}" in r]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=name)
            ax.set_title(f"{label} ({mode})", fontsize=10)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pilot.png", dpi=110)

    columns = [f"{m}_{k}" for m in ("greedy", "sampled") for k, _ in PANELS]
    lines = ["| run | update | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, rows in evals.items():
        for r in rows:
            cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float | int) else "-" for c in columns]
            lines.append(f"| {name} | {r['update']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | updates | median s/update (collect + update) |", "|---|---|---|"]
    for name, rows in metrics.items():
        seconds = [r["collect_seconds"] + r["update_seconds"] for r in rows if "collect_seconds" in r]
        if seconds:
            lines.append(f"| {name} | {len(rows)} | {statistics.median(seconds):.2f} |")
    (out / "pilot.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"-> {out / 'pilot.png'}, {out / 'pilot.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
