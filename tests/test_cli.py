"""``repro-env`` subcommands: list, show, tasks check, rollout, and error exits."""

from __future__ import annotations

import pytest

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
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("repro-env")
    result = subprocess.run([str(script), command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: repro-env {command}")
