"""``repro-env compare``'s report: results.md and results.json from the runs' per-episode rows.

Every metric of ``agents.episodes.episode_metrics`` gets, per method and decoding mode, its mean over
the applicable episodes and a 95% bootstrap interval over seeds and problems; every method with a
baseline gets the paired difference (absolute and relative in %) with its own interval
(agents.bootstrap has the definitions). results.md shows the metrics of ``SHOWN`` that were
measured; results.json holds them all, the per-run means and the training curves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from repro_env.agents.bootstrap import Bootstrap, cells
from repro_env.agents.grid import EPISODES
from repro_env.agents.metrics import read_jsonl
from repro_env.agents.plots import plot_grid_curves

MODES = ("greedy", "sampled")
SHOWN = ("accuracy", "tokens_per_response", "backtracks_per_response", "tokens_after_first_correct",
         "overthinking", "overthinking_tokens", "process_return")
"""Metrics of the Markdown tables, in column order (when measured)."""
_NOT_METRICS = ("mode", "problem", "sample")


def statistics(out: Path, config: Any, table: Mapping[str, Mapping[int, str]], baselines: Mapping[str, str | None]
               ) -> dict[str, Any]:
    """``{"methods": {row: {seeds, runs, baseline, metrics}}, "paired": [...]}`` with every interval."""
    names = dict.fromkeys(name for runs in table.values() for name in runs.values())
    episodes = {name: read_jsonl(out / "runs" / name / EPISODES) for name in names}
    problems = 1 + max(r["problem"] for rows in episodes.values() for r in rows)
    metrics = list(dict.fromkeys(k for rows in episodes.values() for r in rows for k in r if k not in _NOT_METRICS))
    boot = Bootstrap(problems, draws=config.bootstrap_samples, seed=config.bootstrap_seed)

    def data(row: str, seeds: Sequence[int], key: str) -> tuple[Any, Any]:
        mode, _, metric = key.partition("_")
        return cells([episodes[table[row][s]] for s in seeds], metric, mode, problems)

    keys = [f"{mode}_{m}" for mode in MODES for m in metrics]
    methods = {}
    for row, runs in table.items():
        seeds = list(runs)
        methods[row] = {"seeds": seeds, "runs": [runs[s] for s in seeds], "baseline": baselines.get(row),
                        "metrics": {k: boot.summary(*data(row, seeds, k), seeds) for k in keys}}
    paired = []
    for row, base in baselines.items():
        if base is None:
            continue
        seeds = list(table[row])
        entry = {"method": row, "baseline": base, "seeds": seeds,
                 "metrics": {k: boot.paired(data(row, seeds, k), data(base, seeds, k), seeds) for k in keys}}
        if "overthinking_tokens" in metrics:
            entry["removed_overthinking_share"] = {mode: boot.removed_share(
                [data(r, seeds, f"{mode}_overthinking_tokens") for r in (row, base)],
                [data(r, seeds, f"{mode}_tokens_per_response") for r in (row, base)], seeds) for mode in MODES}
        paired.append(entry)
    bootstrap = {"draws": config.bootstrap_samples, "seed": config.bootstrap_seed, "level": 0.95,
                 "interval": "percentile", "resampled": "seeds and problems (the same problem draws for every "
                                                        "method and seed), episodes kept together per problem",
                 "problems": problems}
    return {"bootstrap": bootstrap, "methods": methods, "paired": paired}


def _number(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "[n/a]" if ci is None else f"[{_number(ci[0])}, {_number(ci[1])}]"


def _percent(x: float | None, ci: Sequence[float] | None) -> str:
    if x is None:
        return "n/a (a baseline draw is 0)"
    return f"{x:+.1f}% " + ("[n/a]" if ci is None else f"[{ci[0]:+.1f}%, {ci[1]:+.1f}%]")


def _columns(stats: Mapping[str, Any]) -> list[str]:
    measured = {k for m in stats["methods"].values() for k, v in m["metrics"].items() if v["mean"] is not None}
    return [m for m in SHOWN if any(f"{mode}_{m}" in measured for mode in MODES)]


def sampling_temperature(config: Any) -> str:
    """The temperature of the sampled evaluation: the learners' ``temperature`` (default 1.0), with
    each method's override; "per method" when they differ."""
    temperatures = {method.learner.get("temperature", config.learners.get(method.algorithm, {}).get("temperature", 1.0))
                    for method in config.methods.values()} or {1.0}
    return f"{temperatures.pop():g}" if len(temperatures) == 1 else "per method"


def results_tables(stats: Mapping[str, Any], samples: int, temperature: str = "1") -> str:
    """Per mode: mean [95% CI] of each shown metric per method, then the paired differences."""
    columns = _columns(stats)
    head = " | ".join(c.replace("_", " ") for c in columns)
    titles = {"greedy": "Greedy", "sampled": f"Sampled (T = {temperature}, {samples} per problem)"}
    lines = []
    for mode in MODES:
        lines += [f"### {titles[mode]}", "", f"| method | seeds | {head} |", "|---" * (len(columns) + 2) + "|"]
        for row, m in stats["methods"].items():
            cells_ = [f"{_number(m['metrics'][f'{mode}_{c}']['mean'])} {_interval(m['metrics'][f'{mode}_{c}']['ci'])}"
                      if f"{mode}_{c}" in m["metrics"] else "-" for c in columns]
            lines.append(f"| {row} | {len(m['seeds'])} | " + " | ".join(cells_) + " |")
        lines.append("")
    if stats["paired"]:
        lines += ["## Paired differences to the baseline", "",
                  "Δ = method − baseline on the method's seeds and the same problems and sampling seeds "
                  "[95% CI]; then the relative difference in % [95% CI].", ""]
        for mode in MODES:
            lines += [f"### {titles[mode]}", "", f"| method | baseline | {head} |", "|---" * (len(columns) + 2) + "|"]
            for p in stats["paired"]:
                cells_ = []
                for c in columns:
                    d = p["metrics"].get(f"{mode}_{c}")
                    cells_.append("-" if d is None else f"{_number(d['difference'])} {_interval(d['ci'])}; "
                                  + _percent(d['relative_percent'], d['relative_ci']))
                lines.append(f"| {p['method']} | {p['baseline']} | " + " | ".join(cells_) + " |")
            lines.append("")
    shares = [p for p in stats["paired"] if "removed_overthinking_share" in p]
    if shares:
        lines += ["## Removed tokens that were overthinking", "",
                  "Of the tokens per response a method removed against its baseline, the share that were "
                  "overthinking segments (backtracks and repeated computations): Δ overthinking tokens / Δ "
                  "tokens [95% CI]; n/a where the method removed no tokens.", "",
                  "| method | baseline | " + " | ".join(titles[mode] for mode in MODES) + " |", "|---|---|---|---|"]
        for p in shares:
            cells_ = [f"{_number(c['share'])} {_interval(c['ci'])}" if c["share"] is not None else "n/a"
                      for c in (p["removed_overthinking_share"][mode] for mode in MODES)]
            lines.append(f"| {p['method']} | {p['baseline']} | " + " | ".join(cells_) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(out: Path, config: Any, table: Mapping[str, Mapping[int, str]],
                  baselines: Mapping[str, str | None], results: Mapping[str, Mapping[str, Any]],
                  seconds: float, command: str) -> str:
    """results.md, results.json and plots/ in ``out``; returns results.md's text."""
    stats = statistics(out, config, table, baselines)
    curves = {row: [results[name]["history"] for name in runs.values()] for row, runs in table.items()
              if any(results[name]["history"] for name in runs.values())}
    plots = plot_grid_curves(curves, out / "plots", config.smooth)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    compute = sum(r["wall_seconds"] for r in results.values())
    text = "\n".join([
        "# RePro vs outcome-only", "",
        f"Command: `{command}`  ", f"Machine: {machine}; workers {config.workers} × {config.threads} "
        f"torch thread(s)  ",
        f"Run time: {seconds / 60:.1f} min in this invocation; runs' own time {compute / 60:.1f} min "
        f"(wall time of each run's last start: training + evaluation)", "",
        f"{len(config.seeds)} paired seed(s) per method unless its row says otherwise, {config.updates} updates "
        f"per run; held-out: {stats['bootstrap']['problems']} test problems, greedy and {config.eval_samples} "
        f"samples at T = {sampling_temperature(config)}, with the sampling seeds shared by every method of a seed. "
        "Mean [95% CI]: "
        f"percentile bootstrap, B = {config.bootstrap_samples} draws resampling seeds and problems (the same "
        f"problem draws for every method), seed {config.bootstrap_seed}.", "",
        results_tables(stats, config.eval_samples, sampling_temperature(config)),
        "Training curves (mean over seeds, 95% t-interval band): "
        + ", ".join(str(p.relative_to(out)) for p in plots), ""])
    (out / "results.md").write_text(text, encoding="utf-8")
    payload = {"command": command, "machine": machine, "seconds": seconds,
               "config": json.loads(json.dumps(dataclasses.asdict(config))), **stats,
               "runs": dict(results)}
    (out / "results.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return text
