"""Held-out figures of the bundled tiny math model (or of ``--model DIR``), printed against targets.

    python benchmarks/eval_tiny_model.py [--model DIR] [--problems 200] [--seed 1234]

Greedy and temperature-1.0 accuracy, the share of sampled responses with a backtrack or redundant
segment, and the share of reference solutions with J_T - J_0 > 0 (see ``repro_env.pretrain_eval.evaluate``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from repro_env.assets import bundled_model_dir
from repro_env.pretrain_eval import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: bundled)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny budget: 4 problems (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.problems = 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    evaluate(args.model or bundled_model_dir(), args.problems, args.seed, progress=True)


if __name__ == "__main__":
    main()
