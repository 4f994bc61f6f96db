"""Judge a ``repro-env compare`` grid against RePro's targets (configs/compare_overthinker.yaml's).

    python -m repro_env.agents.judge runs/compare-overthinker

Reads a finished ``repro-env compare`` output directory and prints Markdown: RePro against
outcome-only on each target, RePro against the length penalty (paired, the same bootstrap draws),
and the share of the removed tokens that were overthinking segments. Every figure is a paired
difference on the same seeds, problems and sampling seeds, with its 95% percentile-bootstrap
interval (agents/bootstrap.py). Targets, RePro against outcome-only:

    accuracy                       not lower: the difference's interval includes 0 or lies above it
    tokens per response            at least 25% lower
    backtracks per response        at least 50% lower
    tokens after the first correct at least 50% lower

A relative target is "met" when its whole interval is beyond it, "point only" when the estimate is
beyond it but the interval crosses it, else "missed".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from repro_env.agents.report import MODES, statistics

PAIRS = (("GRPO + RePro", "GRPO"), ("PPO + RePro", "PPO"))
LENGTH_PENALTY = "GRPO + length penalty"
RELATIVE_TARGETS = (("tokens_per_response", -25.0), ("backtracks_per_response", -50.0),
                    ("tokens_after_first_correct", -50.0))
SHOWN = ("accuracy", "tokens_per_response", "backtracks_per_response", "tokens_after_first_correct",
         "overthinking", "overthinking_tokens")


def _ci(ci: list[float] | None, digits: int = 3) -> str:
    return "[n/a]" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _relative_verdict(d: dict[str, Any], target: float) -> str:
    x, ci = d["relative_percent"], d["relative_ci"]
    if x is None:
        return "n/a"
    verdict = "met" if ci is not None and ci[1] <= target else "point only" if x <= target else "missed"
    return f"{x:+.1f}% {_ci(ci, 1)}: **{verdict}**"


def _accuracy_verdict(d: dict[str, Any]) -> str:
    ok = d["ci"] is not None and d["ci"][1] >= 0
    return f"{d['difference']:+.3f} {_ci(d['ci'])}: **{'met' if ok else 'missed'}**"


def judge(out: Path) -> str:
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    methods = results["methods"]
    config = SimpleNamespace(bootstrap_samples=results["config"]["bootstrap_samples"],
                             bootstrap_seed=results["config"]["bootstrap_seed"])
    rows = [r for pair in PAIRS for r in pair] + [LENGTH_PENALTY]
    table = {r: dict(zip(methods[r]["seeds"], methods[r]["runs"], strict=True)) for r in rows if r in methods}
    baselines = {r: None for r in table} | {m: b for m, b in PAIRS if m in table and b in table}
    if LENGTH_PENALTY in table:
        baselines[LENGTH_PENALTY] = "GRPO"
    stats = statistics(out, config, table, baselines)
    paired = {p["method"]: p for p in stats["paired"]}
    lines = ["## RePro against outcome-only: the targets", "",
             "| method | baseline | mode | accuracy Δ (not lower) | tokens (≥ 25% lower) "
             "| backtracks (≥ 50% lower) | tokens after 1st correct (≥ 50% lower) |", "|---|---|---|---|---|---|---|"]
    for method, base in PAIRS:
        if method not in paired:
            continue
        for mode in MODES:
            m = paired[method]["metrics"]
            cells = [_accuracy_verdict(m[f"{mode}_accuracy"])]
            cells += [_relative_verdict(m[f"{mode}_{k}"], t) for k, t in RELATIVE_TARGETS]
            lines.append(f"| {method} | {base} | {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    if LENGTH_PENALTY in table and "GRPO + RePro" in table:
        versus = statistics(out, config, {r: table[r] for r in ("GRPO + RePro", LENGTH_PENALTY)},
                            {"GRPO + RePro": LENGTH_PENALTY, LENGTH_PENALTY: None})["paired"][0]["metrics"]
        lines += ["## GRPO + RePro − GRPO + length penalty (paired)", "",
                  "| mode | " + " | ".join(k.replace("_", " ") for k in SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
        for mode in MODES:
            cells = [f"{versus[f'{mode}_{k}']['difference']:+.3f} {_ci(versus[f'{mode}_{k}']['ci'])}" for k in SHOWN]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Of the removed tokens, the share that were overthinking segments", "",
              "| method | baseline | " + " | ".join(MODES) + " |", "|---|---|---|---|"]
    for p in stats["paired"]:
        shares = p.get("removed_overthinking_share", {})
        cells = [("n/a" if shares.get(mode, {}).get("share") is None
                  else f"{shares[mode]['share']:.3f} {_ci(shares[mode]['ci'])}") for mode in MODES]
        lines.append(f"| {p['method']} | {p['baseline']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m repro_env.agents.judge COMPARE_OUT_DIR")
    print(judge(Path(sys.argv[1])))
