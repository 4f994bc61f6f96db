"""PNG curves of a run (``RUN_DIR/plots/*.png``) drawn from its ``metrics.jsonl`` and ``eval.jsonl``.

One figure per concern, each against the update number; a figure is skipped when none of its
metrics was logged (PPO logs a value loss, GRPO does not). Matplotlib runs on the Agg backend, so
plotting works without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from repro_env.agents.metrics import read_jsonl

# file stem → (title, y label, [(stream, key, legend label)])
FIGURES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "accuracy": ("Accuracy", "accuracy", [
        ("metrics", "accuracy", "train (rollouts)"),
        ("eval", "greedy_accuracy", "held-out, greedy"),
        ("eval", "sampled_accuracy", "held-out, avg@n"),
    ]),
    "reward": ("Rewards per response", "reward", [
        ("metrics", "outcome_reward", "outcome R"),
        ("metrics", "process_reward", "process (RePro)"),
        ("metrics", "process_return", "process return (RePro, sum over segments)"),
    ]),
    "tokens": ("Tokens per response", "tokens", [
        ("metrics", "tokens_per_response", "train"),
        ("eval", "greedy_tokens_per_response", "held-out, greedy"),
    ]),
    "backtracks": ("Backtracks per response", "backtracks", [
        ("metrics", "backtracks_per_response", "train"),
        ("eval", "greedy_backtracks_per_response", "held-out, greedy"),
    ]),
    "kl": ("KL to the reference policy", "KL", [("metrics", "kl", "KL")]),
    "entropy": ("Policy entropy", "nats / token", [("metrics", "entropy", "entropy")]),
    "losses": ("Losses", "loss", [
        ("metrics", "loss", "total"),
        ("metrics", "policy_loss", "policy"),
        ("metrics", "pg_loss", "policy (clipped surrogate)"),
        ("metrics", "value_loss", "value"),
    ]),
    "throughput": ("Throughput", "tokens / s", [
        ("metrics", "generation_tokens_per_s", "generation"),
        ("metrics", "scoring_tokens_per_s", "scoring"),
    ]),
    "time": ("Seconds per update", "seconds", [
        ("metrics", "collect_seconds", "collect (generation + scoring)"),
        ("metrics", "update_seconds", "update (optimisation)"),
    ]),
}


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(row.get("update", len(xs))))
            ys.append(float(value))
    return xs, ys


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every figure that has data into ``run_dir/plots``; return the written PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    streams = {"metrics": read_jsonl(run_dir / "metrics.jsonl"), "eval": read_jsonl(run_dir / "eval.jsonl")}
    out = run_dir / "plots"
    written = []
    for stem, (title, ylabel, curves) in FIGURES.items():
        data = [(label, *_series(streams[stream], key)) for stream, key, label in curves]
        data = [d for d in data if d[1]]
        if not data:
            continue
        out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
        fig.subplots_adjust(left=0.13, right=0.97, top=0.92, bottom=0.12)  # tight_layout costs a draw
        for label, xs, ys in data:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set(title=title, xlabel="update", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        path = out / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
