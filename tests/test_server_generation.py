"""Our agents generating on a real vLLM OpenAI server (``backend: vllm-server``), with weight pushes.

The suite's one server (``conftest.vllm_server``) serves the fixture model; every test that changes
its weights puts the fixture model's weights back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from repro_env.agents.checkpoint import latest_checkpoint
from repro_env.agents.grpo import GRPO, GRPOConfig
from repro_env.agents.policy import LMPolicy, PolicyConfig
from repro_env.agents.run_config import parse_config
from repro_env.agents.train import train
from repro_env.errors import ScorerError
from repro_env.scoring.options import ServerOptions
from repro_env.tasks import resolve_task

pytestmark = pytest.mark.vllm

PROMPTS = ["Question: what is 3 + 4 times 5?\n\n", "Question: what is 12 - 7?\n\n"]


def greedy_segments(policy: LMPolicy, steps: int = 2) -> list[list[list[int]]]:
    """Token ids of ``steps`` greedy segments per prompt, stepping the text as the env does."""
    observations = list(PROMPTS)
    policy.reset(observations)
    out = []
    for _ in range(steps):
        segments = policy.act(observations, greedy=True)
        out.append([s.ids for s in segments])
        observations = [o + s.text + ("" if s.text.endswith("\n\n") else "\n\n")
                        for o, s in zip(observations, segments, strict=True)]
    return out


@pytest.fixture
def fixture_weights(tiny_llama_dir):
    return load_file(str(tiny_llama_dir / "model.safetensors"))


@pytest.fixture
def restore_server(server, tiny_llama_dir, fixture_weights):
    """Push the fixture model's weights back into the server after the test."""
    yield server
    from repro_env.scoring.server import ServerClient
    from repro_env.scoring.vllm import checkpoint_keys

    if server.running:
        ServerClient(ServerOptions(base_url=server.url)).push_weights(fixture_weights,
                                                                       checkpoint_keys(tiny_llama_dir))


def policy_config(model, url: str, **fields) -> PolicyConfig:
    return PolicyConfig(model=str(model), backend="vllm-server", max_segment_tokens=8,
                        options=ServerOptions(base_url=url, retries=1, request_timeout_s=30), **fields)


def test_server_segments_equal_the_hf_backend(server, tiny_llama_dir):
    server_policy = LMPolicy(policy_config(tiny_llama_dir, server.url), seed=0)
    hf_policy = LMPolicy(PolicyConfig(model=str(tiny_llama_dir), max_segment_tokens=8), seed=0)
    assert greedy_segments(server_policy) == greedy_segments(hf_policy)
    # Sampled segments: ids, stop reasons and behaviour log-probs (temperature 1: the raw
    # distribution's, which vLLM returns) agree with the training model's own forward pass.
    server_policy.reset(PROMPTS)
    for trace, segment in zip(server_policy.traces, server_policy.act(PROMPTS), strict=True):
        assert 1 <= len(segment.ids) == len(segment.log_probs) <= 8 and segment.stop in ("delimiter", "eos", "length")
        ids = torch.tensor([trace.ids])
        with torch.no_grad():
            log_probs, _, _ = hf_policy.forward(ids, torch.ones_like(ids))
        np.testing.assert_allclose(segment.log_probs, log_probs[0, -len(segment.ids):].numpy(), atol=1e-4)


def test_the_server_must_serve_the_policy_model(server):
    with pytest.raises(ScorerError, match=r"tokenises differently from the local model 'bundled'"):
        LMPolicy(policy_config("bundled", server.url))


def test_grpo_update_pushes_its_weights_to_the_generation_server(restore_server, tiny_llama_dir):
    """After an update, the server's greedy segments equal the trained hf policy's.

    The scorer is hf here, so only the generator's push can reach the server: with that push
    disabled (tried once), ``after`` equals ``before`` and the last assertion fails.
    """
    task = resolve_task("RePro-Math-v0", {"scorer": {"model": str(tiny_llama_dir), "max_length": 192},
                                          "limits": {"max_steps": 3, "max_segment_tokens": 8}})
    config = GRPOConfig(model=str(tiny_llama_dir), backend="vllm-server",
                        generator_options=ServerOptions(base_url=restore_server.url, retries=1),
                        prompts_per_update=2, group_size=2, lr=1e-2, micro_batch_size=4, kl_coef=0.0)
    learner = GRPO(config, task, seed=0)
    hf_policy = LMPolicy(PolicyConfig(model=str(tiny_llama_dir), max_segment_tokens=8), seed=0)
    before = greedy_segments(learner.policy)
    assert before == greedy_segments(hf_policy)

    learner.update(learner.collect())
    hf_policy.model.load_state_dict(learner.policy.model.state_dict())
    expected = greedy_segments(hf_policy)
    assert expected != before  # lr 1e-2 moves the greedy output, so a missing push would show
    assert greedy_segments(learner.policy) == expected


def test_a_training_run_stops_at_its_last_good_checkpoint_when_the_server_dies(
        restore_server, tiny_llama_dir, tmp_path, monkeypatch):
    config, learner_config = parse_config({
        "algorithm": "grpo", "updates": 3, "checkpoint_every": 10, "eval_every": 0,
        "out_dir": str(tmp_path / "run"),
        "task_overrides": {"scorer": {"model": str(tiny_llama_dir), "max_length": 192},
                           "limits": {"max_steps": 2, "max_segment_tokens": 6}},
        "learner": {"model": str(tiny_llama_dir), "backend": "vllm-server", "prompts_per_update": 2,
                    "group_size": 2, "micro_batch_size": 4, "kl_coef": 0.0, "lr": 1e-3,
                    "server": {"base_url": restore_server.url, "retries": 1, "request_timeout_s": 10}}},
        source="test")
    real_update = GRPO.update

    def update_then_lose_the_server(self, batch):  # the generation node dies after the first update
        metrics = real_update(self, batch)
        restore_server.stop()
        return metrics

    monkeypatch.setattr(GRPO, "update", update_then_lose_the_server)
    with pytest.raises(ScorerError, match=rf"{restore_server.url}/v1/completions failed after 2 attempts"
                                          r"(.|\n)*scorer failed after update 1; saved .*update-000001"):
        train(config, learner_config, progress=False, plots=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "update-000001"
