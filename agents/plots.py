"""PNG curves of a run (``RUN_DIR/plots/*.png``, from its metrics.jsonl and eval.jsonl) and of a compare grid.

One figure per concern, each against the update number; a figure is skipped when none of its
metrics was logged (PPO logs a value loss, GRPO does not). Matplotlib runs on the Agg backend, so
plotting works without a display. ``plot_grid_curves`` draws ``repro-env compare``'s training
curves: one line per method, the mean over seeds with a 95% t-interval band.
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


# -- repro-env plot RUN_DIR RUN_DIR ...: the held-out curves of several runs, one line per run ----

HELD_OUT = ("accuracy", "tokens_per_response", "backtracks_per_response", "tokens_after_first_correct",
            "overthinking")


def plot_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """``out/held_out.png`` (greedy and sampled rows × :data:`HELD_OUT` panels, one line per run) and
    ``out/held_out.md`` (every evaluation of every run, and each run's median seconds per update)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d.name for d in run_dirs]
    labels = names if len(set(names)) == len(names) else [str(d) for d in run_dirs]
    evals = {label: read_jsonl(d / "eval.jsonl") for label, d in zip(labels, run_dirs, strict=True)}
    metrics = {label: read_jsonl(d / "metrics.jsonl") for label, d in zip(labels, run_dirs, strict=True)}
    modes = [m for m in ("greedy", "sampled") if any(f"{m}_accuracy" in r for rows in evals.values() for r in rows)]
    keys = [k for k in HELD_OUT if any(f"{m}_{k}" in r for m in modes for rows in evals.values() for r in rows)]
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(modes), len(keys), figsize=(3.6 * len(keys), 3.2 * len(modes)), dpi=90,
                             squeeze=False)
    for row, mode in enumerate(modes):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            for name, rows in evals.items():
                xs, ys = _series(rows, f"{mode}_{key}")
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
            ax.set(title=f"{key.replace('_', ' ')} ({mode})", xlabel="update")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = out / "held_out.png"
    fig.savefig(png)
    plt.close(fig)

    columns = [f"{m}_{k}" for m in modes for k in keys]
    lines = ["| run | update | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, rows in evals.items():
        for r in rows:
            cells = [f"{r[c]:.3f}" if isinstance(r.get(c), int | float) else "-" for c in columns]
            lines.append(f"| {name} | {r['update']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | updates | median s/update (collect + update) |", "|---|---|---|"]
    for name, rows in metrics.items():
        seconds = sorted(r["collect_seconds"] + r["update_seconds"] for r in rows if "collect_seconds" in r)
        if seconds:
            lines.append(f"| {name} | {len(rows)} | {seconds[len(seconds) // 2]:.2f} |")
    table = out / "held_out.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [png, table]


# -- repro-env compare: one line per method, mean over seeds with a 95% band ----------------------

GRID_CURVES = ("accuracy", "tokens_per_response", "backtracks_per_response", "process_return")
"""Per-update training metrics that ``repro-env compare`` keeps and plots (and any overthinking metric)."""
# t_{0.975, df} for df = 1..30; beyond, 1.96 + 2.5/df is within 0.002 of it
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def is_curve_key(key: str) -> bool:
    """Whether ``repro-env compare`` keeps a metrics.jsonl column as a training curve."""
    return key in ("update", *GRID_CURVES) or key.startswith(("overthinking", "tokens_after_first_correct"))


def t_quantile(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (the half-width factor of a 95% t-interval)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.5 / df


def mean_band(curves: list[list[float]]) -> tuple[Any, Any]:
    """(mean, half-width) per update over seeds: the 95% t-interval mean ± t_{0.975, n−1}·s/√n
    (half-width 0 with one seed); curves are cut to the shortest."""
    import numpy as np

    n = min(len(c) for c in curves)
    values = np.array([c[:n] for c in curves], dtype=np.float64)  # (seeds, n)
    mean = values.mean(axis=0)
    if len(curves) < 2:
        return mean, np.zeros(n)
    return mean, t_quantile(len(curves) - 1) * values.std(axis=0, ddof=1) / math.sqrt(len(curves))


def plot_grid_curves(histories: dict[str, list[list[dict[str, Any]]]], out: Path, smooth: int) -> list[Path]:
    """``out/<metric>.png`` per training metric: one line per method (row → each seed's history rows),
    each seed's curve a rolling mean over ``smooth`` updates, then mean over seeds ± 95% t-interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(dict.fromkeys(k for runs in histories.values() for rows in runs for r in rows
                              for k in r if is_curve_key(k) and k != "update"))
    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
        fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
        for i, (method, runs) in enumerate(histories.items()):
            series = [dict(zip(*_series(rows, key), strict=True)) for rows in runs]  # update → value, per seed
            updates = sorted(set.intersection(*(set(s) for s in series)))  # where every seed has the metric
            if not updates:
                continue
            curves = [[s[u] for u in updates] for s in series]
            window = min(smooth, len(updates))
            smoothed = [list(np.convolve(c, np.ones(window) / window, mode="valid")) for c in curves]
            mean, half = mean_band(smoothed)  # (n,), (n,)
            x = np.asarray(updates[window - 1:])
            ax.plot(x, mean, color=f"C{i % 10}", label=f"{method} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            ax.fill_between(x, mean - half, mean + half, color=f"C{i % 10}", alpha=0.2, linewidth=0)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.set(title=f"{key.replace('_', ' ')} (training rollouts; band: 95% t-interval over seeds)",
               xlabel=f"update (rolling mean over {smooth} logged updates)", ylabel=key.replace("_", " "))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{key}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
