"""Registration: every tasks/*.yaml is a gym id, import loads no model, external YAML in one call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import repro_env
from repro_env.errors import TaskSpecError
from repro_env.tasks import builtin_task_files, builtin_task_ids, load_task


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_builtin_yaml_is_registered():
    ids = {load_task(path).id for path in builtin_task_files()}
    assert len(ids) >= 4 and "RePro-Math-v0" in ids
    assert ids <= set(repro_env.registered_ids())
    for task_id in ids:
        spec = gym.spec(task_id)
        assert spec.entry_point == "repro_env.env:make_env"
        assert spec.vector_entry_point == "repro_env.vector:make_vector_env"


def test_import_registers_without_loading_a_model():
    out = run_python("import sys, gymnasium as gym, repro_env; "
                     "print('RePro-Math-v0' in gym.registry, 'torch' in sys.modules, "
                     "'transformers' in sys.modules)")
    assert out.split() == ["True", "False", "False"]


def test_module_prefixed_id_works_without_import(tiny_llama_dir):
    out = run_python("import gymnasium as gym; "
                     f"env = gym.make('repro_env:RePro-Math-v0', scorer={{'model': {str(tiny_llama_dir)!r}}}); "
                     "obs, info = env.reset(seed=0); print(obs.startswith('Question:'), info['problem_id'])")
    assert out.split()[0] == "True"


def test_misspelt_id_suggests_the_right_one():
    with pytest.raises(gym.error.NameNotFound, match="Did you mean: `RePro-Math`"):
        gym.make("RePro-Mth-v0")


def test_register_task_from_a_file_outside_the_package(tmp_path, tiny_llama_dir):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "id: Mine-v0\n"
        "description: two inline problems\n"
        "source:\n  kind: inline\n  items:\n"
        "    - {question: 'What is 2 + 3?', answer: '5'}\n"
        "    - {question: 'What is 4 * 2?', answer: '8'}\n"
        "splits: {test_fraction: 0.5}\n"
    )
    assert repro_env.register_task(path) == "Mine-v0"
    env = gym.make("Mine-v0", scorer={"model": str(tiny_llama_dir)})
    obs, _ = env.reset(seed=0)
    assert obs == "Question: What is 4 * 2?\n\n"  # test_fraction 0.5: the other problem is the test split
    *_, terminated, _, info = env.step("The answer is \\boxed{8}.")
    assert terminated and info["correct"] is True
    env.reset(seed=0)
    *_, terminated, _, info = env.step("The answer is \\boxed{5}.")
    assert terminated and info["correct"] is False


def test_register_task_rejects_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("id: Bad-v0\nsource: {kind: inline, items: []}\n")
    with pytest.raises(TaskSpecError, match=r"bad\.yaml: field 'source\.items' must be a non-empty list of "
                                            r"\{question, answer\} mappings for source kind 'inline', got \(\)"):
        repro_env.register_task(path)


@pytest.mark.parametrize("task_id", sorted(load_task(p).id for p in builtin_task_files()))
def test_gymnasium_check_env_on_every_builtin_id_with_its_default_scorer(task_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(task_id)  # the bundled model, CPU: no arguments needed on a fresh install
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["J_baseline"] < 0


def test_register_task_refuses_a_builtin_id_and_a_non_path(tmp_path):
    """issue 28: a built-in id was replaced silently; register_task(None) was a raw TypeError."""
    path = tmp_path / "mine.yaml"
    path.write_text("id: RePro-Math-v0\nsource: {kind: arithmetic}\n")
    with pytest.raises(TaskSpecError, match=r"mine.yaml: id 'RePro-Math-v0' is a built-in task's \(math.yaml\); "
                                            r"give the task another id, or pass override=True"):
        repro_env.register_task(path)
    assert gym.spec("RePro-Math-v0").kwargs["task"].endswith("math.yaml")  # untouched
    with pytest.raises(TaskSpecError, match=r"register_task needs the path of a task YAML file, got None"):
        repro_env.register_task(None)
    try:
        assert repro_env.register_task(path, override=True) == "RePro-Math-v0"
        assert gym.spec("RePro-Math-v0").kwargs["task"] == str(path.resolve())
    finally:
        repro_env.register_task(builtin_task_ids()["RePro-Math-v0"])

