"""Task YAMLs: every built-in task loads and its reference solutions verify; every error message."""

import re
import sys
from pathlib import Path

import pytest
import yaml

from repro_env.errors import TaskSpecError
from repro_env.problems import Problem
from repro_env.tasks import (
    TaskSpec,
    builtin_task_files,
    builtin_task_ids,
    check_task_file,
    load_task,
    make_source,
    resolve_task,
)

BUILTIN = {"RePro-Math-v0", "RePro-MathEasy-v0", "RePro-MathHard-v0", "RePro-GSMSymbolic-v0",
           "RePro-ChainSum-v0", "RePro-JSONLExample-v0"}


def write(tmp_path: Path, data, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_builtin_tasks_load_and_are_documented():
    files = builtin_task_files()
    assert set(builtin_task_ids()) == BUILTIN and len(files) == len(BUILTIN)
    for path in files:
        assert path.read_text().startswith("# RePro-"), f"{path} has no documentation header"
        assert load_task(path).id in BUILTIN
    assert load_task("RePro-Math-v0").scorer.model == "bundled"


@pytest.mark.parametrize("task_id", sorted(BUILTIN))
def test_reference_solutions_verify(task_id):
    spec = load_task(task_id)
    source = make_source(spec)
    for split, index in [("train", i) for i in range(8)] + [("test", i) for i in range(3)]:
        problem = source.get(split, index)
        boxed = f"The answer is \\boxed{{{problem.answer}}}."
        response = "".join(problem.solution) if problem.solution else boxed
        assert spec.final_answer_regex.search(response.split(spec.delimiter)[-2] if problem.solution
                                              else response)
        assert spec.outcome_reward(response, problem) == 1.0, (task_id, problem.id)
        assert not spec.verify("The answer is \\boxed{-12345}.", problem)


def test_rendering_and_backtracks():
    spec = load_task("RePro-Math-v0")
    problem = Problem(id="p", question="2 + 3?", answer="5")
    assert spec.render_prompt(problem) == "Question: 2 + 3?\n\n"
    assert spec.render_answer(problem) == "\\boxed{5}"
    for text in ("Wait, that is wrong.", "Hmm, let me think.", "Let me double-check: 2 + 3 = 5.",
                 "Actually it is 6.", "No, that is not right.", "let me recheck"):
        assert spec.is_backtrack(text), text
    for text in ("2 + 3 = 5.", "The answer is \\boxed{5}.", "Nothing awaits.", "Now, 5."):
        assert not spec.is_backtrack(text), text


def test_check_task_file_prints_spec_and_three_samples():
    out = check_task_file(Path("tasks") / "math.yaml" if Path("tasks/math.yaml").exists()
                          else builtin_task_ids()["RePro-Math-v0"])
    assert "id: RePro-Math-v0" in out and "kind: arithmetic" in out
    assert len(re.findall(r"^--- sample \d: arith-train-0-\d+$", out, flags=re.M)) == 3
    assert "dataset:" not in out  # fields of other source kinds are left out
    assert "The answer is \\boxed{" in out


def test_gsm_symbolic_uses_the_dataset_scorer():
    spec = load_task("RePro-GSMSymbolic-v0")
    problem = make_source(spec).get("test", 0)
    assert spec.verifier.kind == "reasoning_gym"
    assert spec.outcome_reward(f"so \\boxed{{{problem.answer}}}", problem) == 1.0
    assert spec.outcome_reward("no answer", problem) == 0.0


def test_inline_source_and_overrides(tmp_path):
    items = [{"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(10)]
    path = write(tmp_path, {"id": "Inline-v0", "source": {"kind": "inline", "items": items},
                            "splits": {"test_fraction": 0.3}})
    spec = load_task(path)
    source = make_source(spec)
    assert (source.size("train"), source.size("test")) == (7, 3)  # round(10 · 0.3) = 3
    override = resolve_task(path, {"reward": {"alpha": 0.5}, "limits": {"max_steps": 3}})
    assert (override.reward.alpha, override.limits.max_steps, override.reward.k) == (0.5, 3, 20)
    assert resolve_task(spec) is spec
    with pytest.raises(TaskSpecError,
                       match=r"Inline-v0 overrides: unknown key 'reward.alpah'. Did you mean 'alpha'\?"):
        resolve_task(spec, {"reward": {"alpah": 0.5}})


def test_jsonl_path_is_relative_to_the_yaml(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"q": "1+1?", "a": 2}\n{"q": "2+2?", "a": 4}\n')
    path = write(tmp_path, {"id": "J-v0", "source": {"kind": "jsonl", "path": "data/p.jsonl",
                                                     "question_field": "q", "answer_field": "a"},
                            "splits": {"test_fraction": 0.5}})
    spec = load_task(path)
    assert spec.source.options.path == str((tmp_path / "data" / "p.jsonl").resolve())
    problems = [make_source(spec).get(s, 0) for s in ("train", "test")]
    assert sorted(p.answer for p in problems) == ["2", "4"]


# --- every TaskSpecError message -------------------------------------------------------------

BAD = [
    ({"id": "X-v0", "promt_template": "Q: {question}"},
     r"task.yaml: unknown key 'promt_template'. Did you mean 'prompt_template'\? Valid "
     r"keys: answer_location, answer_template"),
    ({"id": "X-v0", "limits": {"max_step": 3}},
     r"task.yaml: unknown key 'limits.max_step'. Did you mean 'max_steps'\?"),
    ({"id": "X-v0", "limits": {"max_steps": "ten"}},
     r"task.yaml: field 'limits.max_steps' must be an int, got 'ten' \(str\)"),
    ({"id": "X-v0", "limits": {"max_steps": 0}},
     r"task.yaml: field 'limits.max_steps' must be an int >= 1, got 0 \(int\)"),
    ({"id": "X-v0", "reward": {"alpha": -1}},
     r"task.yaml: field 'reward.alpha' must be a number >= 0, got -1.0 \(float\)"),
    ({"id": "X-v0", "verifier": {"kind": "maths"}},
     r"task.yaml: field 'verifier.kind' must be one of 'math', 'exact', 'reasoning_gym', "
     r"got 'maths' \(str\). "
     r"Did you mean 'math'\?"),
    ({"id": "X-v0", "source": {"kind": "jsonl", "path": "missing.jsonl"}},
     r"task.yaml: field 'source.path' must be an existing JSONL file \(relative paths start "
     r"at the task YAML's "
     r"directory\), got '/.*/missing.jsonl' \(str\)"),
    ({"id": "X-v0", "prompt_template": "Q: {q}"},
     r"task.yaml: field 'prompt_template' must be a format string whose only placeholder is \{question\}"),
    ({"id": "X-v0", "prompt_template": "Q:"},
     r"task.yaml: field 'prompt_template' must be a template containing the placeholder \{question\}, "
     r"got 'Q:' \(str\)"),
    ({"id": "X-v0", "answer_template": "<{answer}> {x}"},
     r"task.yaml: field 'answer_template' must be a format string whose only placeholder is \{answer\}"),
    ({"id": "X-v0", "answer_template": "\\boxed{answer}"},
     r"task.yaml: field 'answer_template' must be a template whose LaTeX braces are doubled, "
     r"e.g. '\\boxed\{\{\{answer\}\}\}', got '\\\\boxed\{answer\}' \(str\)"),
    ({"id": "X-v0", "answer_template": "\\boxed{{answer}}"},
     r"task.yaml: field 'answer_template' must be a template containing the placeholder \{answer\}"),
    ({"id": "X-v0", "answer_template": "ANSWER"},
     r"task.yaml: field 'answer_template' must be a template containing the placeholder \{answer\}"),
    ({"id": "X-v0", "source": {"kind": "inline", "items": []}},
     r"task.yaml: field 'source.items' must be a non-empty list of \{question, answer\} mappings for source "
     r"kind 'inline', got \(\) \(tuple\)"),
    ({"id": "X-v0", "source": {"kind": "inline", "items": [{"question": "q"}]}},
     r"task.yaml: field 'source.items\[0\]' must be a mapping with keys 'question' and 'answer', "
     r"got \{'question': 'q'\} \(dict\)"),
    ({"id": "X-v0", "final_answer_pattern": "\\\\boxed{("},
     r"task.yaml: field 'final_answer_pattern' must be a valid regular expression, got '\\\\\\\\boxed\{\(' "
     r"\(str\): missing \), unterminated subpattern at position 8"),
    ({"id": "X-v0", "backtrack_patterns": ["wait", "(hmm"]},
     r"task.yaml: field 'backtrack_patterns\[1\]' must be a valid regular expression, got '\(hmm' \(str\)"),
    ({"id": "Math"},
     r"task.yaml: field 'id' must be a gym id like 'RePro-Math-v0' "
     r"\(\[namespace/\]Name-vN\), got 'Math' \(str\)"),
    ({"description": "no id"}, r"task.yaml: TaskSpec: .*missing 1 required positional argument: 'id'"),
    ({"id": "X-v0", "delimiter": ""}, r"task.yaml: field 'delimiter' must be a non-empty string, got ''"),
    ({"id": "X-v0", "answer_location": "boxed"},
     r"task.yaml: field 'answer_location' must be one of 'step_result', 'none', got 'boxed' \(str\)"),
    ({"id": "X-v0", "source": {"kind": "arithmetic", "dataset": "chain_sum"}},
     r"task.yaml: field 'source.dataset' must be unset for source kind 'arithmetic' \(it applies to: "
     r"reasoning_gym\), got 'chain_sum' \(str\)"),
    ({"id": "X-v0", "source": {"kind": "jsonl", "pth": "p.jsonl"}},
     r"task.yaml: unknown key 'source.pth'. Did you mean 'path'\?"),
    ({"id": "X-v0", "source": {"kind": "jsnl"}},
     r"task.yaml: field 'source.kind' must be one of .* got 'jsnl' \(str\). Did you mean 'jsonl'\?"),
    ({"id": "X-v0", "source": {"kind": "reasoning_gym"}},
     r"task.yaml: field 'source.dataset' must be a reasoning-gym dataset name for source kind "
     r"'reasoning_gym', got ''"),
    ({"id": "X-v0", "source": {"kind": "hf_dataset"}},
     r"task.yaml: field 'source.path' must be a local Hugging Face dataset directory or a "
     r"cached dataset name"),
    ({"id": "X-v0", "source": {"kind": "arithmetic", "arithmetic": {"max_ops": 1}}},
     r"task.yaml: field 'source.arithmetic.max_ops' must be an int >= min_ops \(2\), got 1 \(int\)"),
    ({"id": "X-v0", "verifier": {"kind": "reasoning_gym"}},
     r"task.yaml: field 'verifier.kind' must be 'math' or 'exact' for source kind 'arithmetic'"),
    ({"id": "X-v0", "verifier": {"timeout_s": 0}},
     r"task.yaml: field 'verifier.timeout_s' must be a number > 0, got 0.0 \(float\)"),
    ({"id": "X-v0", "splits": {"train_seed": 3, "test_seed": 3}},
     r"task.yaml: field 'splits.test_seed' must be different from train_seed \(3\), got 3 \(int\)"),
    ({"id": "X-v0", "splits": {"test_fraction": 1.0}},
     r"task.yaml: field 'splits.test_fraction' must be a number in \(0, 1\), got 1.0 \(float\)"),
    ({"id": "X-v0", "splits": {"train_size": 0}},
     r"task.yaml: field 'splits.train_size' must be an int >= 1 or null, got 0 \(int\)"),
    ({"id": "X-v0", "source": {"kind": "reasoning_gym", "dataset": "chain_sum"},
      "splits": {"train_seed": 0, "test_seed": 10, "train_size": 100}},
     r"task.yaml: field 'splits.test_seed' must be outside \[-500, 800\) \(reasoning-gym "
     r"item i uses seed \+ i"),
    ({"id": "X-v0", "scorer": {"batch_size": 0}},
     r"task.yaml: field 'scorer.batch_size' must be an int >= 1, got 0 \(int\)"),
    ([1, 2], r"task.yaml: top level must be a mapping, got \[1, 2\] \(list\)"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_task_spec_errors(tmp_path, data, message):
    with pytest.raises(TaskSpecError, match=message):
        load_task(write(tmp_path, data))


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "id: X-v0\nlimits:\n  max_steps: [3\n  max_segment_chars: 10\n")
    with pytest.raises(TaskSpecError, match=r"task.yaml:4: invalid YAML: (did not find )?expected ',' or '\]'"):
        load_task(path)


def test_unknown_task_file_and_id(tmp_path):
    with pytest.raises(TaskSpecError, match=r"nope.yaml: no such task file"):
        load_task(tmp_path / "nope.yaml")
    with pytest.raises(TaskSpecError, match=r"task must be a YAML file or a built-in task id, "
                                             r"got 'RePro-Mth-v0' \(str\). Did you mean 'RePro-Math-v0'\?"):
        load_task("RePro-Mth-v0")


def test_empty_jsonl_and_unknown_dataset_fail_when_the_source_is_built(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    spec = load_task(write(tmp_path, {"id": "E-v0", "source": {"kind": "jsonl", "path": "empty.jsonl"}}))
    with pytest.raises(TaskSpecError, match=r"field 'source.path' must be a source with at least one record, "
                                             r"got '/.*empty.jsonl' \(str\)"):
        make_source(spec).size("train")
    spec = load_task(write(tmp_path, {"id": "R-v0",
                                      "source": {"kind": "reasoning_gym", "dataset": "gsm_symbolc"}}))
    with pytest.raises(TaskSpecError, match=r"Did you mean 'gsm_symbolic'\?"):
        make_source(spec)


def test_hf_dataset_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    spec = load_task(write(tmp_path, {"id": "H-v0", "source": {"kind": "hf_dataset", "path": "some/dir"}}))
    with pytest.raises(TaskSpecError,
                       match=r"needs the datasets package: pip install 'repro-env\[datasets\]'"):
        make_source(spec).size("train")


def test_hf_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"problem": ["1+1?", "2+2?", "3+3?"], "solution": ["2", "4", "6"]})
    data.save_to_disk(str(tmp_path / "ds"))
    spec = load_task(write(tmp_path, {"id": "H-v0", "source": {
        "kind": "hf_dataset", "path": "ds", "question_field": "problem", "answer_field": "solution"},
        "splits": {"test_fraction": 0.34}}))
    source = make_source(spec)
    assert (source.size("train"), source.size("test")) == (2, 1)


def test_taskspec_direct_construction_raises_taskspecerror():
    with pytest.raises(TaskSpecError, match=r"field 'id' must be a gym id"):
        TaskSpec(id="bad id")


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [*a]\n", r"an alias refers to a value that contains it"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"b{i}: &b{i} [{', '.join([f'*{p}'] * 10)}]\n" for i, p in enumerate(["a", "b0", "b1", "b2", "b3", "b4"])),
     r"its aliases \(\*name\) expand it to more than 100000 values"),
    ("a: 1\nb: 2\na: 3\n", r"duplicate key 'a' \(first at line 1\); keep one"),
])
def test_yaml_documents_are_bounded_and_keys_unique(text, message):
    from repro_env.config import load_yaml

    with pytest.raises(yaml.YAMLError, match=message):
        load_yaml(text)


def test_yaml_aliases_and_merge_keys_within_bounds_still_load():
    from repro_env.config import load_yaml

    data = load_yaml("base: &base {lr: 1e-3, epochs: 2}\nrun: {<<: *base, epochs: 3}\nagain: *base\n")
    assert data["run"] == {"lr": 0.001, "epochs": 3} and data["again"] == {"lr": 0.001, "epochs": 2}


def test_yaml_uses_libyaml_when_installed():
    """A 50 MB task file: PyYAML's pure-Python parser takes minutes, libyaml's a fraction of that."""
    from repro_env.config import _YamlLoader

    assert issubclass(_YamlLoader, yaml.CSafeLoader) or not yaml.__with_libyaml__


def test_answer_location_is_checked_when_the_spec_is_built_in_code():
    with pytest.raises(TaskSpecError, match=r"field 'answer_location' must be 'step_result' or 'none', got 'boxed'"):
        TaskSpec(id="X-v0", answer_location="boxed")
