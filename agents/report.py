"""``repro-env compare``'s report: results tables, RePro vs baseline against the targets, curves.

Inputs are the grid's result rows (``{"method", "algorithm", "repro", "metrics", "history"}``);
the learner's label plus ``REPRO`` names a process-reward row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPRO = " + RePro"  # suffix of a learner's label in the rows of its process-reward runs
# (results.json key, column title); ``sampled_*`` are the avg@n episodes at temperature 1.0
COLUMNS = (
    ("greedy_accuracy", "accuracy (greedy)"),
    ("sampled_accuracy", "avg@n (T=1)"),
    ("sampled_tokens_per_response", "tokens/response (T=1)"),
    ("greedy_tokens_per_response", "tokens/response (greedy)"),
    ("sampled_backtracks_per_response", "backtracks/response (T=1)"),
    ("greedy_backtracks_per_response", "backtracks/response (greedy)"),
    ("sampled_process_return", "process return (T=1)"),
)
TARGETS = {"tokens": -0.15, "backtracks": -0.30}
"""Relative changes RePro vs baseline that the issue aims for (measured, never asserted)."""


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """method → metric → (mean, sample std over seeds; 0 with one seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = [r["metrics"] for r in rows if r["method"] == method]
        out[method] = {}
        for key, _ in COLUMNS:
            values = np.array([m[key] for m in runs], dtype=np.float64)  # (seeds,)
            std = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[method][key] = (float(values.mean()), std)
    return out


def _cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def comparisons(stats: Mapping[str, Mapping[str, tuple[float, float]]]) -> list[dict[str, Any]]:
    """RePro vs baseline per learner (each ``L`` row that has an ``L + RePro`` row): accuracy
    difference and relative token/backtrack changes.

    Accuracy meets its target when RePro's mean >= the baseline's mean − one std (the larger of the
    two methods' seed stds); tokens and backtracks use the T=1 episodes (4× the greedy sample).
    """
    out = []
    for label in stats:
        base, repro = stats[label], stats.get(label + REPRO)
        if repro is None:
            continue
        row: dict[str, Any] = {"algorithm": label}
        for key in ("greedy_accuracy", "sampled_accuracy"):
            tolerance = max(base[key][1], repro[key][1])
            row[key] = {"change": repro[key][0] - base[key][0], "tolerance": tolerance,
                        "met": repro[key][0] >= base[key][0] - tolerance}
        for name, key in (("tokens", "sampled_tokens_per_response"),
                          ("backtracks", "sampled_backtracks_per_response")):
            b, r = base[key][0], repro[key][0]
            change = (r - b) / b if b > 0 else float("nan")
            row[name] = {"baseline": b, "repro": r, "change": change, "target": TARGETS[name],
                         "met": bool(change <= TARGETS[name])}
        out.append(row)
    return out


def results_table(start: Mapping[str, Any], stats: Mapping[str, Mapping[str, tuple[float, float]]],
                  seeds: int, samples: int) -> str:
    """The Markdown results table: one row per method plus the starting model."""
    titles = [title.replace("avg@n", f"avg@{samples}") for _, title in COLUMNS]
    lines = ["| method | " + " | ".join(titles) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines.append("| starting model | " + " | ".join(f"{start[k]:.3f}" for k, _ in COLUMNS) + " |")
    for method, values in stats.items():
        lines.append(f"| {method} | " + " | ".join(_cell(*values[k], seeds) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """RePro vs baseline against the issue's targets."""
    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines = ["| algorithm | Δ accuracy greedy (target ≥ −1 std) | Δ avg@n | tokens (target ≤ −15%) "
             "| backtracks (target ≤ −30%) |", "|---|---|---|---|---|"]
    for r in rows:
        acc = [f"{r[k]['change']:+.3f} (std {r[k]['tolerance']:.3f}; {mark(r[k]['met'])})"
               for k in ("greedy_accuracy", "sampled_accuracy")]
        rel = [f"{r[k]['baseline']:.2f} → {r[k]['repro']:.2f} ({_percent(r[k]['change'])}; {mark(r[k]['met'])})"
               for k in ("tokens", "backtracks")]
        lines.append(f"| {r['algorithm']} | " + " | ".join(acc + rel) + " |")
    return "\n".join(lines)


def _percent(change: float) -> str:
    return f"{change:+.1%}" if np.isfinite(change) else "n/a: baseline 0"


def ablation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per ablation variant (one seed each)."""
    keys = [k for k, _ in COLUMNS]
    lines = ["| variant | " + " | ".join(t for _, t in COLUMNS) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r['metrics'][k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def plot_curves(rows: Sequence[Mapping[str, Any]], out: Path, smooth: int) -> list[Path]:
    """plots/{accuracy,tokens,backtracks}.png: training rollouts per update, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))  # in the order of the config's list
    figures = {"accuracy": ("accuracy", "Training accuracy (rollouts at T=1)"),
               "tokens": ("tokens_per_response", "Tokens per response (training rollouts)"),
               "backtracks": ("backtracks_per_response", "Backtracks per response (training rollouts)")}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (key, title) in figures.items():
        fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
        fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
        for method in dict.fromkeys(r["method"] for r in rows):
            runs = [r for r in rows if r["method"] == method]
            curves = [[h[key] for h in r["history"]] for r in runs]
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)  # (n,)
            window = min(smooth, n)
            smoothed = np.convolve(mean, np.ones(window) / window, mode="valid")  # (n − window + 1,)
            colour = f"C{algorithms.index(runs[0]['algorithm']) % 10}"  # one per learner, by position
            ax.plot(np.arange(window, n + 1), smoothed, label=method, color=colour,
                    linestyle="-" if runs[0]["repro"] else "--")
        ax.set(title=title, xlabel=f"update (rolling mean over {smooth})", ylabel=key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / "plots" / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
