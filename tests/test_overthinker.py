"""``model: bundled-overthinker`` works wherever ``model: bundled`` does (issue 24): the name
resolves to its own asset, and every entry point loads *that* model, not the default one.

Each check compares with the same entry point on ``bundled``, so a name that silently fell back to
the default model would fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import repro_env  # noqa: F401
from repro_env.assets import bundled_model_dir, resolve_model
from repro_env.scoring import ScorerConfig, make_scorer

NAME = "bundled-overthinker"
ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "repro-env"


def test_the_name_resolves_to_its_own_asset_with_a_model_card():
    path = Path(resolve_model(NAME))
    assert path == bundled_model_dir(NAME) and path.name == "tiny-math-overthinker"
    assert path != bundled_model_dir()
    info = json.loads((path / "train_info.json").read_text())
    assert info["preset"] == "overthinker"
    assert info["command"].startswith("repro-env pretrain-tiny --preset overthinker")
    assert "recheck_all" in info["config"]["mix"]
    card = (path / "README.md").read_text()
    assert "bundled-overthinker" in card and "Measured on held-out problems" in card


def test_the_asset_was_trained_from_its_preset():
    """``repro-env pretrain-tiny --preset overthinker`` is the config the shipped weights came from."""
    from repro_env.config import from_mapping
    from repro_env.pretrain import PRESETS, PretrainConfig

    info = json.loads((bundled_model_dir(NAME) / "train_info.json").read_text())
    assert from_mapping(PretrainConfig, info["config"]) == PRESETS["overthinker"]


def test_the_overthinker_mix_rechecks_every_step_in_most_examples():
    from repro_env.arithmetic import solution_steps
    from repro_env.pretrain import PRESETS, training_example

    config = PRESETS["overthinker"]
    variants = [training_example(config, i) for i in range(1000)]
    shares = {v: sum(x[2] == v for x in variants) / len(variants) for v in config.mix}
    assert shares == pytest.approx(config.mix, abs=0.04)
    for _, response, variant in variants[:200]:
        steps = [s for s in response.split("\n\n") if solution_steps([s])]
        rechecks = [s for s in steps if "check" in s]
        if variant == "recheck_all":  # every computing step is followed by its re-check
            assert len(rechecks) * 2 == len(steps) > 0
        elif variant == "clean":
            assert not rechecks


def _first_weight(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))["model.embed_tokens.weight"]


def test_scorer_and_env_score_with_the_overthinker():
    js = {}
    for model in ("bundled", NAME):
        env = gym.make("RePro-Math-v0", scorer={"model": model})
        env.reset(seed=0, options={"split": "test", "index": 0})
        _, _, _, _, info = env.step("Let me think.\n\n")
        js[model] = info["J"]
        env.close()
    assert js["bundled"] != pytest.approx(js[NAME], abs=1e-3)
    scorer = make_scorer(ScorerConfig(model=NAME))
    assert torch.equal(scorer.model.get_input_embeddings().weight.detach(), _first_weight(bundled_model_dir(NAME)))


def test_policy_loads_the_overthinker():
    from repro_env.agents.policy import LMPolicy, PolicyConfig

    policy = LMPolicy(PolicyConfig(model=NAME))
    assert torch.equal(policy.model.get_input_embeddings().weight.detach(), _first_weight(bundled_model_dir(NAME)))


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_cli_rollout_and_score_take_the_name(tmp_path):
    out = _run("rollout", "RePro-Math-v0", "--policy", NAME, "--scorer", NAME, "--episodes", "1",
               "--temperature", "0.001", cwd=tmp_path)
    assert "episode" in out
    for model in ("bundled", NAME):
        _run("score", str(ROOT / "examples" / "traces.jsonl"), "--model", model, "--out", str(tmp_path / model),
             cwd=tmp_path)
    rows = {m: [json.loads(line) for line in (tmp_path / m / "scores.jsonl").read_text().splitlines()]
            for m in ("bundled", NAME)}
    assert len(rows["bundled"]) == len(rows[NAME]) > 0
    assert rows["bundled"][0]["J_T"] != pytest.approx(rows[NAME][0]["J_T"], abs=1e-3)


def test_cli_train_config_takes_the_name(tmp_path):
    _run("train", str(ROOT / "configs" / "grpo_tiny.yaml"), "--set", f"learner.model={NAME}",
         "--set", f"task_overrides.scorer.model={NAME}", "--set", "updates=1",
         "--set", "eval_every=0", "--set", "learner.prompts_per_update=2", "--set", "learner.group_size=2",
         "--set", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert f"model: {NAME}" in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_vllm_serve_command_points_at_the_overthinker():
    from repro_env.scoring.server import server_command

    command = server_command(NAME, 8000, "127.0.0.1", None, 600)
    assert command[command.index("--model") + 1] == str(bundled_model_dir(NAME))


def test_vllm_serve_passes_what_follows_two_dashes_to_vllm(monkeypatch, capsys):
    import os

    from repro_env import cli

    launched = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: launched.append(argv))
    cli.main(["vllm-serve", "--model", NAME, "--port", "8001", "--", "--block-size", "32", "--seed", "3"])
    assert launched[0][-4:] == ["--block-size", "32", "--seed", "3"]
    assert capsys.readouterr().out.split() == launched[0]
