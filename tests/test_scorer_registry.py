"""Scorer backends are a registry: a plugin backend is one module plus one line, used through YAML."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import gymnasium as gym
import numpy as np
import pytest

import repro_env.registry
from repro_env import register_task
from repro_env.errors import ConfigError, ScorerError, TaskSpecError
from repro_env.scoring import SCORERS, ScorerConfig, ScoreRequest, check_scorer, make_scorer, register_scorer
from repro_env.scoring.hf import HFScorer
from repro_env.tasks import load_task

TOY = "tests.plugins.toy_scorer:ShiftedScorer"
REQUEST = ScoreRequest("Question: 2 + 3?\n\n", ("2 + 3 = 5.\n\n", "So \\boxed{5}."), "\\boxed{5}")


def write_task(tmp_path, scorer_yaml: str, name: str = "Shifted-v0"):
    path = tmp_path / "task.yaml"
    path.write_text(f"id: {name}\nsource: {{kind: arithmetic}}\nscorer:\n{scorer_yaml}")
    return path


def test_a_subclass_of_a_builtin_scorer_registered_by_class_alone_builds(tiny_llama_dir):
    """It inherits the built-in's options_class (it failed with 'NoOptions' has no attribute
    'attn_implementation' when HFScorer carried none)."""
    from repro_env.scoring.options import HFOptions

    class MyScorer(HFScorer):
        pass

    register_scorer("mine", MyScorer)
    scorer = make_scorer(ScorerConfig(backend="mine", model=str(tiny_llama_dir), options={"chunk_tokens": 512}))
    assert type(scorer) is MyScorer and scorer.config.options == HFOptions(chunk_tokens=512)
    plain = HFScorer(ScorerConfig(model=str(tiny_llama_dir))).score([REQUEST])[0].J
    np.testing.assert_allclose(scorer.score([REQUEST])[0].J, plain, atol=1e-6)


def test_a_registered_plugin_backend_runs_through_a_task_yaml(tmp_path, tiny_llama_dir):
    register_scorer("shifted", TOY)  # the one line a plugin needs
    path = write_task(tmp_path, f"  backend: shifted\n  model: {tiny_llama_dir}\n  shift: -1.5\n")
    spec = load_task(path)
    assert spec.scorer.options.shift == -1.5 and spec.scorer.options.chunk_tokens == 1024
    env = gym.make(register_task(path))
    scorer = env.unwrapped.scorer
    assert type(scorer).__name__ == "ShiftedScorer"
    plain = HFScorer(ScorerConfig(model=str(tiny_llama_dir))).score([REQUEST])[0].J
    np.testing.assert_allclose(scorer.score([REQUEST])[0].J, plain - 1.5, atol=1e-6)
    env.reset(seed=0)
    assert np.isfinite(env.step("2 + 3 = 5.\n\n")[4]["J"])
    env.close()


def test_a_backend_given_by_path_needs_no_registration(tiny_llama_dir):
    config = ScorerConfig(backend=TOY, model=str(tiny_llama_dir), options={"shift": 2.0})
    assert type(make_scorer(config)).__name__ == "ShiftedScorer"


@pytest.mark.parametrize("scorer_yaml, message", [
    ("  backend: hff\n", r"task.yaml: field 'scorer.backend' must be one of 'hf', .*Did you mean 'hf'\?"),
    ("  options: {chunk_tokns: 8}\n", r"task.yaml: unknown key 'scorer.options.chunk_tokns'. Did you mean "
                                      r"'chunk_tokens'\?"),
    ("  backend: vllm\n  attn_implementation: eager\n", r"task.yaml: unknown key 'scorer.attn_implementation'"),
    ("  options: {chunk_tokens: 0}\n", r"task.yaml: field 'scorer.options.chunk_tokens' must be an int >= 1, got 0"),
    ("  backend: tests.plugins.nope:Scorer\n", r"task.yaml: scorer backend 'tests.plugins.nope:Scorer': cannot "
                                               r"import 'Scorer' from 'tests.plugins.nope'"),
])
def test_bad_scorer_settings_name_the_file_and_field(tmp_path, scorer_yaml, message):
    with pytest.raises(TaskSpecError, match=message):
        load_task(write_task(tmp_path, scorer_yaml))


def test_flat_backend_options_of_older_files_still_load():
    config = repro_env.config.from_mapping(ScorerConfig, {"backend": "vllm", "gpu_memory_utilization": 0.3})
    assert config.options.gpu_memory_utilization == 0.3
    assert ScorerConfig(options={"attn_implementation": "eager"}).options.attn_implementation == "eager"


def test_switching_backend_keeps_what_was_set_and_refuses_what_does_not_apply():
    hf = repro_env.config.replace(ScorerConfig(), {"options": {"chunk_tokens": 64}})
    assert hf.options.chunk_tokens == 64
    assert repro_env.config.replace(ScorerConfig(), {"backend": "vllm"}).options.gpu_memory_utilization == 0.5
    with pytest.raises(ConfigError, match="unknown key 'options.chunk_tokens'. Valid keys: gpu_memory_utilization"):
        repro_env.config.replace(hf, {"backend": "vllm"})
    # the new backend's options in the same override (a task's hf scorer moved to a server)
    server = repro_env.config.replace(ScorerConfig(), {"backend": "vllm-server", "options": {"base_url": "http://h:1"}})
    assert server.options.base_url == "http://h:1"
    assert repro_env.config.replace(hf, {"options": {"attn_implementation": "eager"}}).options.chunk_tokens == 64


def test_a_scorer_missing_protocol_members_is_refused_by_name(tiny_llama_dir):
    class HalfScorer:
        def __init__(self, config):
            self.config = config

        def score(self, requests):
            return []

    register_scorer("half", HalfScorer, options=None)
    with pytest.raises(ScorerError, match="scorer backend 'half': HalfScorer is not a Scorer: it lacks "
                                          "max_length, tokenizer, eos_token, reload_weights, session"):
        make_scorer(ScorerConfig(backend="half"))
    with pytest.raises(ScorerError, match=r"ReasoningEnv\(scorer=...\): HalfScorer is not a Scorer"):
        check_scorer(HalfScorer(None), "ReasoningEnv(scorer=...)")


def test_the_entry_point_group_is_read(monkeypatch, tiny_llama_dir):
    points = [EntryPoint(name="shifted-plugin", value=TOY, group="repro_env.scorers")]
    monkeypatch.setattr(repro_env.registry, "entry_points",
                        lambda group: points if group == "repro_env.scorers" else [])
    monkeypatch.setattr(SCORERS, "_plugins_read", False)
    monkeypatch.delitem(sys.modules, "tests.plugins.toy_scorer", raising=False)
    assert "shifted-plugin" in SCORERS.names()
    config = ScorerConfig(backend="shifted-plugin", model=str(tiny_llama_dir), options={"shift": 1.0})
    assert type(make_scorer(config)).__name__ == "ShiftedScorer"


def test_a_scorer_config_built_directly_refuses_an_unknown_backend():
    # once silently an HFScorer; now the same error as in YAML, before any model loads
    with pytest.raises(ConfigError, match=r"field 'backend' must be one of 'hf', 'vllm', 'vllm-server' or "
                                          r"'package.module:Name', got 'server' \(str\). Did you mean 'vllm-server'\?"):
        ScorerConfig(backend="server")


@pytest.mark.parametrize("target", [42, {"backend": "hf"}, "no_colon", "os:", print])
def test_a_scorer_target_is_checked_when_it_is_registered(target):
    """issue 28: 42, a dict or a bad path were accepted and failed later with a raw TypeError."""
    with pytest.raises(ConfigError, match=r"scorer backend 'n': the target must be a Scorer class or its "
                                          r"'package.module:Name' path, got "):
        register_scorer("n", target)


def test_a_path_to_something_else_than_a_class_is_named_before_it_is_called():
    register_scorer("cwd", "os:getcwd")
    with pytest.raises(ConfigError, match=r"scorer backend 'cwd' \(registered as 'os:getcwd'\) is .*getcwd.*, "
                                          r"not a Scorer class"):
        ScorerConfig(backend="cwd")


def test_a_plugin_that_fails_on_import_is_named_with_its_entry_point(monkeypatch):
    points = [EntryPoint(name="broken", value="tests.plugins.raising_plugin:Scorer", group="repro_env.scorers")]
    monkeypatch.setattr(repro_env.registry, "entry_points",
                        lambda group: points if group == "repro_env.scorers" else [])
    monkeypatch.setattr(SCORERS, "_plugins_read", False)
    with pytest.raises(ConfigError, match=r"scorer backend 'broken' \(entry point "
                                          r"'tests.plugins.raising_plugin:Scorer' of an unknown distribution, group "
                                          r"'repro_env.scorers'\): cannot import 'Scorer' from "
                                          r"'tests.plugins.raising_plugin' \(RuntimeError: this plugin is broken\)"):
        SCORERS.get("broken")



def test_options_that_are_not_a_dataclass_are_named_once():
    """issue 28 #15: the message said "got ..., got ..." (the check appended a second 'got')."""
    register_scorer("odd", HFScorer, options=dict)
    with pytest.raises(ConfigError) as info:
        ScorerConfig(backend="odd")
    assert str(info.value) == ("field 'backend': scorer 'odd' must declare its options as a dataclass "
                               "(options_class), got <class 'dict'> (type)")
