"""Pictures of scored traces (:mod:`repro_env.diagnostics`): J curves as PNG and a self-contained HTML report.

- ``plots/<rank>-<id>.png``: J_0..J_T along the reasoning; backtrack segments shaded, segments with
  negative r̃ drawn as red points, unscored segments (the final answer, REPRO_SPEC §4) shaded grey;
- ``curves.png``: a grid of the worst traces' curves (lowest process return first);
- ``report.html``: every reported trace, worst first, with its curve embedded as a base64 PNG and
  its segments coloured by r̃ (green > 0, red < 0, grey: not scored). No script, style sheet or
  image is fetched: the file opens offline.

Matplotlib runs on the Agg backend, so drawing works without a display.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repro_env.diagnostics_summary import format_tokens_after

GRID_MAX = 16
"""Traces in ``curves.png``."""
_PNG_METADATA = {"Software": None}
"""Matplotlib writes its URL into the PNG by default; the report must not hold any."""
UNSCORED_COLOUR = "rgba(128, 128, 128, 0.15)"
"""Background of a segment that is not scored (the final answer, REPRO_SPEC §4)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_curve(ax: Any, row: Mapping[str, Any], *, legend: bool = True) -> None:
    """J_t against the scored t = 0..T on ``ax``: backtracks shaded orange, negative-r̃ points red,
    unscored segments (the final answer and after) shaded grey."""
    segments = row["segments"]
    scored = [s for s in segments if s["scored"]]
    t = [0, *(s["t"] for s in scored)]
    J = [row["J_0"], *(s["J"] for s in scored)]
    ax.plot(t, J, "-o", color="tab:blue", markersize=3.5, linewidth=1.4, label="J")
    for s in segments:
        if s["backtrack"]:
            ax.axvspan(s["t"] - 0.5, s["t"] + 0.5, color="tab:orange", alpha=0.18, linewidth=0)
        if not s["scored"]:
            ax.axvspan(s["t"] - 0.5, s["t"] + 0.5, color="tab:gray", alpha=0.15, linewidth=0)
    negative = [s for s in scored if s["r"] < 0]
    if negative:
        ax.plot([s["t"] for s in negative], [s["J"] for s in negative], "o", color="tab:red", markersize=6,
                label="r~ < 0")
    if any(s["backtrack"] for s in segments):
        ax.plot([], [], "s", color="tab:orange", alpha=0.4, label="backtrack")
    if len(scored) < len(segments):
        ax.plot([], [], "s", color="tab:gray", alpha=0.3, label="not scored")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("segment t")
    ax.set_ylabel("J (mean log-prob of the answer)")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower right")


def _title(row: Mapping[str, Any]) -> str:
    """A plot title; the id is plain text (matplotlib would read ``$...$`` in it as math markup)."""
    mark = "correct" if row["correct"] else "wrong"
    plain = str(row["id"]).replace("$", "\\$")
    return f"{plain} ({mark}): return {row['process_return']:+.3f}, J gain {row['J_gain']:+.2f}"


def curve_png(row: Mapping[str, Any]) -> bytes:
    """One trace's curve as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    draw_curve(ax, row)
    ax.set_title(_title(row), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata=_PNG_METADATA)
    plt.close(fig)
    return buffer.getvalue()


def grid_png(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The curves of up to ``GRID_MAX`` traces in one figure."""
    plt = _pyplot()
    rows = list(rows)[:GRID_MAX]
    cols = min(4, len(rows))
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.6 * cols, 2.7 * lines), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        draw_curve(ax, row, legend=False)
        ax.set_title(_title(row), fontsize=7)
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.supxlabel("segment t")
    fig.supylabel("J")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def _colour(r: float, scale: float) -> str:
    strength = 0.12 + 0.6 * min(1.0, abs(r) / scale) if scale > 0 else 0.12
    rgb = "46, 160, 67" if r >= 0 else "215, 58, 73"
    return f"rgba({rgb}, {strength:.2f})"


def _or_na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def trace_html(rank: int, row: Mapping[str, Any], png: bytes) -> str:
    """One report entry: the header, the embedded curve and the segments coloured by r̃."""
    scale = max((abs(s["r"]) for s in row["segments"][1:]), default=0.0) or 1.0
    cells = []
    for s in row["segments"]:
        if s["scored"]:
            tip = (f"t={s['t']}  J={s['J']:.4f}  S_magn={s['S_magn']:.4f}  S_stab={s['S_stab']:.4f}  "
                   f"S={s['S']:.4f}  r~={s['r']:+.4f}  tokens={s['tokens']}  entropy={s['entropy']:.3f}")
            label, background = f"r~ {s['r']:+.4f}", _colour(s["r"], scale)
        else:
            tip = (f"t={s['t']}  not scored: the reasoning ends before the final answer  "
                   f"tokens={s['tokens']}  entropy={s['entropy']:.3f}")
            label, background = "not scored (after the reasoning)", UNSCORED_COLOUR
        flag = ' <b class="bt">backtrack</b>' if s["backtrack"] else ""
        cells.append(f'<div class="seg" style="background:{background}" title="{html.escape(tip)}">'
                     f'<span class="num">{s["t"]} · {label}{flag}</span>{html.escape(s["text"])}</div>')
    image = base64.b64encode(png).decode("ascii")
    verdict = "correct" if row["correct"] else "wrong"
    return (f'<section class="trace" id="trace-{rank}">\n'
            f'<h2>{rank}. {html.escape(str(row["id"]))} <small>line {row["line"]} · {verdict} · '
            f'predicted {html.escape(str(row["predicted"]))}, gold {html.escape(str(row["answer"]))}</small></h2>\n'
            f'<p>process return {row["process_return"]:+.4f} · J gain {row["J_gain"]:+.4f} '
            f'(J_0 {row["J_0"]:.4f} → J_T {row["J_T"]:.4f}) · {row["num_segments"]} segments, '
            f'{row["num_tokens"]} tokens · {row["backtracks"]} backtracks · {row["negative_rewards"]} with r~ &lt; 0'
            f' · {row["overthinking_segments"]} overthinking segments ({row["overthinking_tokens"]} tokens) · '
            f'tokens after the first correct answer: {_or_na(row["tokens_after_first_correct"])}'
            f'{" · think block" if row["think"] else ""}</p>\n'
            f'<p class="q">{html.escape(row["question"])}</p>\n'
            f'<img alt="J curve of {html.escape(str(row["id"]))}" src="data:image/png;base64,{image}">\n'
            f'<div class="segs">{"".join(cells)}</div>\n</section>\n')


_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 1em auto; color: #222; }
table.sum td { padding: 0 1em 0 0; } h2 small { font-weight: normal; color: #666; font-size: 0.6em; }
.seg { white-space: pre-wrap; font-family: monospace; font-size: 0.85em; padding: 0.3em; margin: 2px 0;
       border-radius: 3px; } .num { color: #555; margin-right: 1em; } .bt { color: #b35900; }
.q { font-style: italic; } section.trace { border-top: 1px solid #ccc; margin-top: 1.5em; }
"""


def report_html(rows: Sequence[Mapping[str, Any]], pngs: Sequence[bytes], summary: Mapping[str, Any],
                task_id: str) -> str:
    """The whole report page (rows worst first, one PNG per row)."""
    stats = [("traces scored", summary["traces"]), ("skipped lines", summary["skipped"]),
             ("mean J gain (J_T − J_0)", f"{summary['mean_J_gain']:+.4f}"),
             ("mean process return (S_T)", f"{summary['mean_process_return']:+.4f}"),
             ("backtracks per trace", f"{summary['backtracks_per_trace']:.2f}"),
             ("segments with r~ < 0", f"{100 * summary['negative_reward_share']:.1f}%"),
             ("accuracy", f"{100 * summary['accuracy']:.1f}%"),
             ("with an overthinking segment", f"{100 * summary['overthinking_share']:.1f}%"),
             ("tokens after the first correct answer", format_tokens_after(summary))]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in stats)
    shown = (f"the {len(rows)} traces of lowest process return" if len(rows) < summary["traces"]
             else f"all {len(rows)} traces")
    body = "".join(trace_html(rank, row, png) for rank, (row, png) in enumerate(zip(rows, pngs, strict=True), 1))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>RePro trace diagnostics ({html.escape(task_id)})</title><style>{_STYLE}</style></head>\n'
            f'<body><h1>RePro trace diagnostics</h1>\n<p>Task {html.escape(task_id)}. Showing {shown}, worst '
            f'first. Segment colour: r~ (green: J moved towards the answer, red: away; grey: not scored, the '
            f'final answer); orange: backtrack; '
            f'hover a segment for its numbers.</p>\n<table class="sum">{table}</table>\n{body}</body></html>\n')


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40] or "trace"


def write_report(out: Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                 task_id: str) -> dict[str, str]:
    """``plots/*.png``, ``curves.png`` and ``report.html`` in ``out`` for ``rows`` (worst first)."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("[0-9][0-9][0-9]-*.png"):  # a previous run's report
        old.unlink()
    pngs = []
    for rank, row in enumerate(rows, 1):
        png = curve_png(row)
        (plots / f"{rank:03d}-{_slug(str(row['id']))}.png").write_bytes(png)
        pngs.append(png)
    grid = grid_png(rows, out / "curves.png")
    report = out / "report.html"
    report.write_text(report_html(rows, pngs, summary, task_id), encoding="utf-8")
    return {"curves": str(grid), "plots": str(plots), "report": str(report)}
