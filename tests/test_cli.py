"""``repro-env`` subcommands: list, show, tasks check, rollout, and error exits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repro_env.cli import main


def test_list_shows_every_builtin_id(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "RePro-Math-v0" in out and "RePro-GSMSymbolic-v0" in out


def test_show_prints_the_resolved_spec(capsys):
    assert main(["show", "RePro-Math-v0"]) == 0
    out = capsys.readouterr().out
    assert "id: RePro-Math-v0" in out and "stability_weight: 0.1" in out


def test_tasks_check_prints_three_problems(capsys):
    assert main(["tasks", "check", "tasks/math_easy.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 3 and "valid task RePro-MathEasy-v0" in out


def test_errors_exit_2_with_the_message(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: Bad-v0\nsource: {kind: inline, items: [{question: q, answer: a}]}\nmax_stepz: 3\n")
    assert main(["tasks", "check", str(bad)]) == 2
    assert "unknown key 'max_stepz'" in capsys.readouterr().err
    assert main(["show", "RePro-Mth-v0"]) == 2
    assert "Did you mean 'RePro-Math-v0'?" in capsys.readouterr().err


def test_rollout_reference_prints_segments_and_summary(capsys, tiny_llama_dir):
    assert main(["rollout", "RePro-Math-v0", "--policy", "reference", "--episodes", "2",
                 "--scorer", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("correct=True") == 2 and "J_baseline=" in out
    assert out.strip().splitlines()[-1].startswith("mean")


def test_unknown_subcommand_is_an_argparse_error():
    with pytest.raises(SystemExit):
        main(["launch"])


def test_rollout_with_a_model_policy(capsys, tiny_llama_dir):
    assert main(["rollout", "RePro-MathEasy-v0", "--policy", str(tiny_llama_dir), "--episodes", "1",
                 "--scorer", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "episode arith-test-" in out and out.strip().splitlines()[-1].startswith("mean")


def test_scoring_demo_prints_reference_and_overthinking_episodes(capsys):
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert out.count("reference solution") == 2 and out.count("with overthinking") == 2
    assert "J_baseline=" in out and "correct=True" in out


@pytest.mark.parametrize("command", ["pretrain-tiny", "train", "eval", "plot", "compare"])
def test_forwarded_commands_take_options_first_through_the_console_script(command):
    """As a user types it: ``repro-env train --help`` (options before any positional argument)."""
    script = Path(sys.executable).with_name("repro-env")
    result = subprocess.run([str(script), command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: repro-env {command}")


# -- ordinary bad input through the console script, as a user types it (issue 12) -------------

ROOT = Path(__file__).resolve().parent.parent
BOMB = """id: Bomb-v0
source:
  kind: inline
  items:
    - question: q
      answer: a
      meta: &l0 [x, x, x, x, x, x, x, x, x, x]
      l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]
      l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]
      l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]
      l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]
      l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]
      l6: &l6 [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]
      l7: &l7 [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6]
      l8: &l8 [*l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7, *l7]
"""


def repro_env_cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``repro-env ARGS`` from the venv's console script, in the repository root."""
    script = Path(sys.executable).with_name("repro-env")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def idle_config(path: Path, **fields) -> Path:
    """A ``repro-env train`` config whose learner needs no model (tests/plugins/idle_learner.py)."""
    data = {"algorithm": "tests.plugins.idle_learner:IdleLearner", "updates": 2, "eval_every": 0,
            "checkpoint_every": 1} | fields
    path.write_text(yaml.safe_dump(data))
    return path


def test_binary_files_are_named_not_decoded(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for command in (["tasks", "check"], ["train"]):
        result = repro_env_cli(*command, str(binary))
        assert result.returncode == 2, result.stderr
        assert f"{binary}: not a UTF-8 text file (invalid start byte at byte 128); expected a YAML file" \
            in result.stderr and "Traceback" not in result.stderr


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 1200
    result = repro_env_cli("tasks", "check", str(bomb), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{bomb}: invalid YAML: its aliases (*name) expand it to more than 100000 values" in result.stderr


@pytest.mark.parametrize(("setting", "message"), [
    pytest.param("learner.device=cuda", r"ConfigError: field 'learner.device' must be a device this machine has "
                 r"\(torch .* sees 0 cuda device\(s\); 'cpu' always works\), got 'cuda' \(str\)",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs no CUDA")),
    ("learner.device=banana", r"ConfigError: configs/grpo_tiny.yaml: field 'learner.device' must be a torch "
                              r"device such as 'cpu', 'cuda' or 'cuda:1', got 'banana' \(str\)"),
])
def test_bad_devices_are_config_errors(tmp_path, capsys, setting, message):
    """In this process (the console script's ``main``): a subprocess would spend seconds importing torch."""
    assert main(["train", "configs/grpo_tiny.yaml", "--set", setting, "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_rollout_refuses_a_seed_numpy_and_gymnasium_would_reject():
    result = repro_env_cli("rollout", "RePro-Math-v0", "--seed", "-5")  # was a raw gymnasium error
    assert result.returncode == 2
    assert ("field '--seed' must be an int in [0, 2**32 - 1] (a seed numpy and torch accept), got -5 (int)"
            in result.stderr)


def test_score_base_url_names_the_backend_that_takes_it(tmp_path):
    result = repro_env_cli("score", str(ROOT / "examples" / "traces.jsonl"), "--base-url", "http://127.0.0.1:9",
                           "--out", str(tmp_path / "out"))
    assert result.returncode == 2  # was "unknown key 'options.base_url'"
    assert ("--base-url is a setting of the vllm-server backend, and the scorer backend here is 'hf': add "
            "--backend vllm-server") in result.stderr
    assert not (tmp_path / "out").exists()


def test_negative_seed_and_unwritable_out_dir(tmp_path):
    config = idle_config(tmp_path / "c.yaml", out_dir=str(tmp_path / "run"))
    result = repro_env_cli("train", str(config), "--set", "seed=-5")
    assert result.returncode == 2
    assert ("field 'seed' must be an int in [0, 2**32 - 1] (a seed numpy and torch accept), got -5 (int)"
            in result.stderr)
    assert not (tmp_path / "run").exists()  # nothing created for a rejected config
    (tmp_path / "file").write_text("")
    result = repro_env_cli("train", str(config), "--no-progress", "--set", f"out_dir={tmp_path / 'file' / 'run'}")
    assert result.returncode == 2
    assert f"field 'out_dir' '{tmp_path}/file/run' cannot be used as a run directory: Not a directory" \
        in result.stderr and "Traceback" not in result.stderr


def test_two_runs_cannot_share_a_run_directory(tmp_path):
    """A second, real process holds the run directory: the run names its PID and writes nothing."""
    from repro_env.agents.checkpoint import locked_run_dir

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path\n"
                               "from repro_env.agents.checkpoint import locked_run_dir\n"
                               f"with locked_run_dir(Path({str(run_dir)!r})):\n"
                               "    print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "locked\n"
        result = repro_env_cli("train", str(idle_config(tmp_path / "c.yaml", out_dir=str(run_dir))), "--no-progress")
        assert result.returncode == 2
        assert f"field 'out_dir' '{run_dir}' is in use by another run (PID {holder.pid}, which holds " \
               f"{run_dir}/.lock); wait for it to finish, or choose another out_dir" in result.stderr
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # the refused run wrote nothing
    finally:
        holder.communicate("\n", timeout=30)
    with locked_run_dir(run_dir):  # the holder's exit released it
        assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["rollout", "RePro-Mth-v0"], r"TaskSpecError: task must be a registered repro-env id or a task YAML file, "
                                  r"got 'RePro-Mth-v0' \(str\). Did you mean 'RePro-Math-v0'\? Registered: RePro-"),
    (["rollout", "Nope-v0"], r"got 'Nope-v0' \(str\). Registered: RePro-"),
    (["rollout", "RePro-Math-v0", "--episodes", "0"], r"ConfigError: field '--episodes' must be an int >= 1, got 0"),
])
def test_rollout_arguments(args, message):
    result = repro_env_cli(*args)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert "Hopper" not in result.stderr and "Traceback" not in result.stderr


def test_train_resume_through_the_console_script_continues_the_run(tmp_path):
    """2 updates, then ``--resume RUN_DIR --set updates=3``: the learner continues from its saved
    state (IdleLearner counts its updates in state.json: a fresh learner would save 1, not 3), and
    the first two metrics lines and checkpoints are kept as they were (a restart rewrites them)."""
    run_dir = tmp_path / "run"
    first = repro_env_cli("train", str(idle_config(tmp_path / "c.yaml", out_dir=str(run_dir))), "--no-progress")
    assert first.returncode == 0, first.stderr
    metrics = (run_dir / "metrics.jsonl").read_text()
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run_dir / "checkpoints").glob("update-*/*")}
    resumed = repro_env_cli("train", "--resume", str(run_dir), "--set", "updates=3", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert "\n".join(lines[:2]) + "\n" == metrics and [json.loads(line)["update"] for line in lines] == [1, 2, 3]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept
    assert json.loads((run_dir / "checkpoints" / "update-000003" / "state.json").read_text()) == {"updates": 3}
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "update-000003"
    assert "mean of updates 1 → mean of updates 3" in resumed.stdout
