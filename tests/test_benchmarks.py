"""Every script in benchmarks/ runs end to end on its ``--smoke`` budget and prints its table.

Smoke runs check that a benchmark still works, never its figures: nothing here reads a timing.
The scripts that need a vLLM server, TRL or more than a few seconds are marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# script -> a line its output must contain (its table header or summary)
EXPECTED = {
    "bench_env.py": "scored tok/s",
    "bench_training.py": "RePro update / the same update without scoring",
    "verify_agreement.py": "agreement: 20/20",  # the first 20 cases agree with math-verify
    "bench_scoring.py": "load average",
    "eval_tiny_model.py": "greedy accuracy:",
    "bench_server.py": "vllm server, 8 concurrent",
    "bench_vs_trl.py": "repro-env GRPO + RePro",
    "bench_vector_steps.py": "step/floor",
}
SLOW = {"bench_scoring.py", "eval_tiny_model.py", "bench_server.py", "bench_vs_trl.py"}


def test_every_benchmark_has_a_smoke_expectation():
    assert sorted(EXPECTED) == sorted(p.name for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s
                                    for s in sorted(EXPECTED)])
def test_benchmark_runs_on_its_smoke_budget(script):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--threads", "1"]
                            if script not in ("verify_agreement.py", "bench_server.py") else
                            [sys.executable, str(BENCHMARKS / script), "--smoke"],
                            capture_output=True, text=True, timeout=900, env=env, cwd=BENCHMARKS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED[script] in result.stdout, result.stdout[-3000:]
