"""Score reference solutions and injected-overthinking variants with ``repro_env.score_traces`` (~1 min on CPU).

For N held-out RePro-Math-v0 problems it writes two traces per problem into ``OUT/traces.jsonl``:
the reference solution, and the same solution with overthinking inserted (``arithmetic.overthink``:
a redundant re-check, a false start corrected by "Wait, ...", or idle rumination; the final answer
is kept). Both go through the same command a user runs on their own traces (the bundled model
scores J), then the script prints the mean diagnostics of each group and draws each problem's two
J curves side by side (``OUT/overthinking.png``). ``OUT/report/`` holds the full report.

    python examples/score_overthinking.py                       # 60 problems, figure of the first 4
    python examples/score_overthinking.py --problems 200 --out runs/overthinking
    python examples/score_overthinking.py --smoke               # 6 problems, figure of the first 2
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

import repro_env
from repro_env.arithmetic import OVERTHINK_KINDS, overthink
from repro_env.tasks import load_task, make_source


def write_traces(path: Path, problems: int, seed: int) -> None:
    source = make_source(load_task("RePro-Math-v0"))
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(problems):
            problem = source.get("test", i)
            kind = OVERTHINK_KINDS[i % len(OVERTHINK_KINDS)]
            variants = {"reference": problem.solution, kind: overthink(problem.solution, rng, kind, count=2)}
            for name, segments in variants.items():
                record = {"id": f"{problem.id}:{name}", "question": problem.question, "answer": problem.answer,
                          "response": "".join(segments).rstrip(), "variant": name}
                f.write(json.dumps(record) + "\n")


def group_means(rows: list[dict]) -> dict[str, float]:
    return {"traces": len(rows),
            "mean J gain": float(np.mean([r["J_gain"] for r in rows])),
            "mean process return": float(np.mean([r["process_return"] for r in rows])),
            "backtracks / trace": float(np.mean([r["backtracks"] for r in rows])),
            "r~ < 0 share": float(sum(r["negative_rewards"] for r in rows) / sum(r["num_segments"] for r in rows)),
            "segments / trace": float(np.mean([r["num_segments"] for r in rows])),
            "accuracy": float(np.mean([r["correct"] for r in rows]))}


def side_by_side(pairs: list[tuple[dict, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repro_env.diagnostics_report import draw_curve

    fig, axes = plt.subplots(len(pairs), 2, figsize=(9.5, 2.6 * len(pairs)), squeeze=False, sharey="row")
    for (clean, noisy), (left, right) in zip(pairs, axes, strict=True):
        for ax, row in ((left, clean), (right, noisy)):
            draw_curve(ax, row, legend=row is noisy)
            ax.set_title(f"{row['id'].split(':')[-1]}: return {row['process_return']:+.3f}, "
                         f"{row['backtracks']} backtracks", fontsize=8)
            ax.set_ylabel("J")
    fig.suptitle("J along the reasoning: reference solution (left) vs injected overthinking (right)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=4, help="problems drawn in the figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/score_overthinking")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 6 problems, 2 in the figure (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.problems, args.pairs = 6, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_traces(out / "traces.jsonl", args.problems, args.seed)
    result = repro_env.score_traces(out / "traces.jsonl", out=out / "report", report_limit=20, progress=True)
    rows = result["traces"]
    clean, noisy = rows[0::2], rows[1::2]
    print(f"{args.problems} problems, {result['summary']['traces_per_s']:.1f} traces/s (scoring only)")
    table = {"reference": group_means(clean), "overthinking": group_means(noisy)}
    print(f"{'':<22}{'reference':>12}{'overthinking':>14}")
    for key in table["reference"]:
        print(f"{key:<22}{table['reference'][key]:>12.3f}{table['overthinking'][key]:>14.3f}")
    lower = sum(n["process_return"] < c["process_return"] for c, n in zip(clean, noisy, strict=True))
    print(f"overthinking variant has the lower process return in {lower} of {len(clean)} pairs")
    inserted = [s["r"] for r in noisy for s in r["segments"] if s["backtrack"]]
    kept = [s["r"] for r in noisy for s in r["segments"][1:] if not s["backtrack"]]
    print(f"overthinking traces: mean r~ of the {len(inserted)} inserted segments {np.mean(inserted):+.4f}, "
          f"of the other segments after the first {np.mean(kept):+.4f}; "
          f"{np.mean(np.asarray(inserted) < 0):.0%} of inserted segments have r~ < 0")
    side_by_side(list(zip(clean, noisy, strict=True))[:args.pairs], out / "overthinking.png")
    print(f"figure: {out / 'overthinking.png'}\nreport: {result['files']['report']}")


if __name__ == "__main__":
    main()
