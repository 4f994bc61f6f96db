"""The scripts in examples/ that have no test file of their own run as a user runs them, on their
``--smoke`` budget, and their printed figures are read back and checked against each other.

``custom_agent.py`` and ``tabular_agent.py`` are tested by ``test_custom_agent.py`` and
``test_tabular_agent.py``. Wall times on the 2-core machine: trl_grpo 15-18 s, sb3_ppo
19-23 s, score_overthinking 6-8 s.
"""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTED_ELSEWHERE = {"custom_agent.py", "tabular_agent.py"}
SMOKED = {"trl_grpo.py", "sb3_ppo.py", "score_overthinking.py"}


def run_example(name: str, *args: str) -> str:
    """``python examples/NAME --smoke ARGS`` from the repository root; its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--smoke", *args], capture_output=True,
                            text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_example_script_is_run_by_a_test():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(SMOKED | TESTED_ELSEWHERE)


def test_trl_grpo_logs_the_repro_figures_of_each_step(tmp_path):
    """2 steps of 2 prompts x 2 completions: each step's reward is the outcome reward's mean over 4
    completions (a multiple of 1/4), and the RePro figures are those of real responses."""
    out = run_example("trl_grpo.py", "--out", str(tmp_path / "run"))
    logged = [ast.literal_eval(line) for line in out.splitlines() if line.startswith("{")]
    steps = [record for record in logged if "step" in record]  # the example's lines, not TRL's own log lines
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert s["reward"] == s["rewards/repro_outcome/mean"] and 0 <= s["reward"] <= 1
        assert (4 * s["reward"]).is_integer() and (4 * s["repro/backtracks_per_response"]).is_integer()
        assert math.isfinite(s["repro/process_return"]) and s["repro/tokens_per_response"] > 0
        assert s["repro/J_gain"] > 0  # the bundled model's reasoning makes the gold answer likelier


ROW = re.compile(r"^(random choice|PPO, trained)\s+(-?[\d.]+) ± [\d.]+\s+([\d.]+)% ± +[\d.]+%\s+(-?[\d.]+)\s+"
                 r"([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.M)


def test_sb3_ppo_prints_a_table_whose_returns_add_up():
    """The return is the process return plus the outcome reward (1 for a correct answer, REPRO_SPEC
    §4), so per policy r = process r + accuracy; the last line is the difference of the two rows."""
    out = run_example("sb3_ppo.py")
    rows = {m[1]: [float(x) for x in m.groups()[1:]] for m in ROW.finditer(out)}
    assert sorted(rows) == ["PPO, trained", "random choice"], out
    for r, accuracy, process_r, steps, tokens, backtracks in rows.values():
        assert (accuracy / 100 * 8) == pytest.approx(round(accuracy / 100 * 8))  # 8 test problems
        assert r == pytest.approx(process_r + accuracy / 100, abs=6e-4)
        assert 1 <= steps <= 12 and tokens > 0 and backtracks >= 0  # max_steps 12 (tasks/math.yaml)
    assert "training: 128 steps in" in out
    gain = re.search(r"trained − random: return ([+-][\d.]+), accuracy ([+-][\d.]+)%", out)
    trained, random = rows["PPO, trained"], rows["random choice"]
    assert float(gain[1]) == pytest.approx(trained[0] - random[0], abs=1.1e-3)
    assert float(gain[2]) == pytest.approx(trained[1] - random[1], abs=0.05)


def test_score_overthinking_finds_the_inserted_segments_and_scores_them_lower(tmp_path):
    """6 problems, each with its reference solution and a variant with 2 inserted overthinking
    segments (final answer kept): both groups verify, the variant has exactly 2 more segments and 2
    backtracks, and RePro gives the inserted segments a lower mean r~ than the others (measured:
    −0.028 against +0.100)."""
    out = run_example("score_overthinking.py", "--out", str(tmp_path))
    table = {m[1]: (float(m[2]), float(m[3]))
             for m in re.finditer(r"^(\S.*?)\s+(-?[\d.]+)\s+(-?[\d.]+)$", out, re.M)}
    assert table["traces"] == (6, 6) and table["accuracy"] == (1, 1)
    assert table["backtracks / trace"] == (0, 2)
    assert table["segments / trace"][1] == pytest.approx(table["segments / trace"][0] + 2)
    assert table["r~ < 0 share"][1] > table["r~ < 0 share"][0]
    lower = re.search(r"lower process return in (\d+) of (\d+) pairs", out)
    assert int(lower[2]) == 6 and 0 <= int(lower[1]) <= 6
    inserted = re.search(r"mean r~ of the (\d+) inserted segments ([+-][\d.]+), of the other segments after the "
                         r"first ([+-][\d.]+)", out)
    assert int(inserted[1]) == 12 and float(inserted[2]) < float(inserted[3])
    assert (tmp_path / "overthinking.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "report.html").is_file()
