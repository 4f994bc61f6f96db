"""Problem-source registry: a plugin kind end to end, overrides, entry points, every YAML unchanged."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import gymnasium as gym
import pytest
import yaml

import repro_env.registry
from repro_env.errors import ConfigError, TaskSpecError
from repro_env.sources import (
    SOURCES,
    ArithmeticOptions,
    InlineOptions,
    SourceConfig,
    register_source,
    source_kind,
)
from repro_env.tasks import check_task_file, load_task, make_source, resolve_task, resolved_dict
from tests.plugins.toy_source import ToyOptions, toy_problems

ROOT = Path(__file__).resolve().parent.parent
TOY = "tests.plugins.toy_source:toy_problems"


def write(tmp_path: Path, source: dict, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"id": "Toy-v0", "source": source,
                                    "splits": {"train_size": 20, "test_size": 5}}))
    return path


@pytest.mark.parametrize("kind", [TOY, "toy"])
def test_a_plugin_kind_builds_problems_by_path_and_by_name(tmp_path, kind):
    spec = load_task(write(tmp_path, {"kind": kind, "max_value": 9}))
    assert spec.source.options == ToyOptions(max_value=9)
    source = make_source(spec)
    assert (source.size("train"), source.size("test")) == (20, 5)
    problem = source.get("train", 3)
    a, b = (int(n) for n in problem.question.removeprefix("What is ").removesuffix("?").split(" + "))
    assert 1 <= a <= 9 and 1 <= b <= 9 and problem.answer == str(a + b)
    assert make_source(spec).get("train", 3) == problem  # a pure function of (spec, split, i)
    assert spec.outcome_reward("".join(problem.solution), problem) == 1.0
    assert "max_value: 9" in check_task_file(write(tmp_path, {"kind": kind, "max_value": 9}), samples=0)


def test_a_plugin_kind_through_gym_make(tiny_llama_dir):
    env = gym.make("RePro-Math-v0", scorer={"model": str(tiny_llama_dir)}, source={"kind": "toy", "max_value": 5},
                   splits={"train_size": 10, "test_size": 2})
    assert env.unwrapped.spec_task.source.options == ToyOptions(max_value=5)
    obs, info = env.reset(seed=0, options={"split": "test", "index": 1})
    problem = env.unwrapped.source.get("test", 1)
    assert info["problem_id"] == "toy-test-1" and problem.question in obs
    *_, terminated, _, info = env.step(f"The answer is \\boxed{{{problem.answer}}}.")
    assert terminated and info["correct"]


def test_plugin_option_errors_name_the_file_and_the_flat_key(tmp_path):
    with pytest.raises(TaskSpecError, match=r"task.yaml: field 'source.max_value' must be an int >= 1, got 0"):
        load_task(write(tmp_path, {"kind": "toy", "max_value": 0}))
    with pytest.raises(TaskSpecError, match=r"task.yaml: unknown key 'source.max_valu'. Did you mean "
                                            r"'max_value'\? Valid keys: max_value"):
        load_task(write(tmp_path, {"kind": TOY, "max_valu": 3}))


BAD_KINDS = [
    ("jsnl", r"task.yaml: field 'source.kind' must be one of 'arithmetic', .*'jsonl'.* or "
             r"'package.module:Name', got 'jsnl' \(str\). Did you mean 'jsonl'\?"),
    ("tests.plugins.nope:toy", r"task.yaml: problem source 'tests.plugins.nope:toy'.*: cannot import 'toy' "
                               r"from 'tests.plugins.nope' \(ModuleNotFoundError"),
    ("tests.plugins.toy_source:ToyOptions", r"task.yaml: field 'source.kind' must name a source kind made "
                                            r"by @register_source, got 'tests.plugins.toy_source:ToyOptions', "
                                            r"which is <class"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_KINDS, ids=[k for k, _ in BAD_KINDS])
def test_unknown_kinds(tmp_path, kind, message):
    with pytest.raises(TaskSpecError, match=message):
        load_task(write(tmp_path, {"kind": kind}))


def test_overrides_merge_into_the_kinds_options():
    spec = resolve_task("RePro-Math-v0", {"source": {"arithmetic": {"max_ops": 5}}})
    assert spec.source.options.arithmetic.max_ops == 5
    assert spec.source.options.arithmetic.min_ops == load_task("RePro-Math-v0").source.options.arithmetic.min_ops
    chain = resolve_task("RePro-ChainSum-v0", {"source": {"options": {"min_terms": 3}}})
    assert (chain.source.options.dataset, chain.source.options.options) == ("chain_sum", {"min_terms": 3})
    inline = resolve_task("RePro-Math-v0", {"source": {"kind": "inline", "items": [{"question": "q", "answer": "1"}]}})
    assert inline.source.options == InlineOptions(items=({"question": "q", "answer": "1"},))
    with pytest.raises(TaskSpecError, match=r"RePro-Math-v0 overrides: unknown key 'source.arithmetic.max_opz'. "
                                            r"Did you mean 'max_ops'\?"):
        resolve_task("RePro-Math-v0", {"source": {"arithmetic": {"max_opz": 3}}})
    with pytest.raises(TaskSpecError, match=r"RePro-Math-v0 overrides: field 'source.items' must be a non-empty"):
        resolve_task("RePro-Math-v0", {"source": {"kind": "inline"}})


def test_direct_construction():
    assert SourceConfig().options == ArithmeticOptions()
    assert SourceConfig("toy", {"max_value": 2}).options == ToyOptions(max_value=2)
    with pytest.raises(TaskSpecError, match=r"unknown key 'pth'. Did you mean 'path'\?"):
        SourceConfig("jsonl", {"pth": "x.jsonl"})
    with pytest.raises(TaskSpecError, match=r"field 'options' must be a mapping of the keys of source kind "
                                            r"'inline' or an instance of InlineOptions, got 3 \(int\)"):
        SourceConfig("inline", 3)


def test_register_source_checks_its_arguments():
    with pytest.raises(ConfigError, match=r"field 'options' must be a dataclass type, got <class 'dict'>"):
        register_source("bad", options=dict)
    with pytest.raises(ConfigError, match=r"field 'path_fields' must be fields of ToyOptions, got \('nope',\)"):
        register_source("bad", options=ToyOptions, path_fields=("nope",))
    with pytest.raises(ConfigError, match=r"problem source 'toy' is already registered"):
        register_source("toy", options=ToyOptions)(lambda options, spec: None)
    assert "bad" not in SOURCES.names()


def test_the_entry_point_group_is_read(monkeypatch):
    points = [EntryPoint(name="toy", value=TOY, group="repro_env.sources")]
    monkeypatch.setattr(repro_env.registry, "entry_points",
                        lambda group: points if group == "repro_env.sources" else [])
    monkeypatch.setattr(SOURCES, "_plugins_read", False)
    monkeypatch.setattr(SOURCES, "_targets", {k: v for k, v in SOURCES._targets.items() if k != "toy"})
    monkeypatch.setattr(SOURCES, "_loaded", {})
    monkeypatch.delitem(sys.modules, "tests.plugins.toy_source")
    kind = source_kind("toy")  # the entry point imports the module, whose decorator agrees with it
    assert kind.name == "toy" and kind.options.__name__ == "ToyOptions" and kind is not toy_problems


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").glob("*.yaml")) + sorted((ROOT / "configs" / "tasks")
                                                                                  .glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_task_yaml_loads_with_its_flat_source_keys(path):
    written = yaml.safe_load(path.read_text())["source"]
    shown = resolved_dict(load_task(path))["source"]
    for key, value in written.items():
        if key not in source_kind(written["kind"]).path_fields:
            assert _contains(shown[key], value), (path, key)


def _contains(shown, written) -> bool:
    """``shown`` has every key of ``written`` with its value (nested options show their defaults too)."""
    if isinstance(written, dict) and isinstance(shown, dict) and set(written) <= set(shown):
        return all(_contains(shown[k], v) for k, v in written.items())
    return (list(shown) if isinstance(shown, tuple) else shown) == written


def test_a_source_config_built_directly_refuses_an_unknown_kind():
    from repro_env.tasks import SourceConfig

    # once silently 'inline'; now the same error as in YAML
    with pytest.raises(TaskSpecError, match=r"field 'kind' must be one of 'arithmetic', 'hf_dataset', 'inline', "
                                            r"'jsonl', 'reasoning_gym'(, '\w+')* or 'package.module:Name', "
                                            r"got 'csv' \(str\)"):
        SourceConfig(kind="csv")
