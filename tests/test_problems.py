"""Problem sources: determinism, disjoint splits, record parsing and their errors."""

import json

import pytest

from repro_env.arithmetic import ArithmeticConfig
from repro_env.errors import TaskSpecError
from repro_env.problems import (
    Problem,
    RecordFields,
    arithmetic_source,
    generator_source,
    read_jsonl,
    reasoning_gym_dataset,
    reasoning_gym_source,
    record_source,
    record_to_problem,
)


def test_arithmetic_source_is_a_pure_function_of_seed_and_index():
    a = arithmetic_source(ArithmeticConfig(), 0, 1, train_size=1000, test_size=50)
    b = arithmetic_source(ArithmeticConfig(), 0, 1, train_size=1000, test_size=50)
    # b is read in the reverse order: problem i does not depend on which problems were drawn before it
    assert [a.get("train", i) for i in (0, 7, 999)] == [b.get("train", i) for i in (999, 7, 0)][::-1]
    shorter = arithmetic_source(ArithmeticConfig(), 0, 1, train_size=20, test_size=50)
    assert [shorter.get("train", i) for i in range(20)] == [a.get("train", i) for i in range(20)]
    assert a.get("train", 7).id == "arith-train-0-7" and a.get("train", 7).answer == "17"  # pinned
    other_seed = arithmetic_source(ArithmeticConfig(), 5, 1, train_size=1000, test_size=50)
    differ = sum(a.get("train", i).question != other_seed.get("train", i).question for i in range(20))
    assert differ >= 18


def test_arithmetic_train_and_test_share_no_question_even_when_the_space_is_small():
    # Two +/- steps on 1..3: few distinct questions, so raw draws collide with test often.
    config = ArithmeticConfig(min_ops=2, max_ops=2, min_value=1, max_value=3, max_result=6,
                              operations=("+", "-"))
    source = arithmetic_source(config, 0, 1, train_size=300, test_size=30)
    test = {source.get("test", i).question for i in range(30)}
    train = [source.get("train", i) for i in range(300)]
    assert not test & {p.question for p in train}
    assert any(not p.id.endswith(f"-{i}") for i, p in enumerate(train))  # some were redrawn


def test_generator_that_cannot_avoid_test_raises():
    constant = lambda split, i: Problem(id=f"{split}-{i}", question="same", answer="1")  # noqa: E731
    source = generator_source("const", constant, train_size=5, test_size=2)
    with pytest.raises(TaskSpecError, match=r"const: train problem 0 collides with the test split 8 times"):
        source.get("train", 0)


def test_problem_set_bounds_and_split_names():
    source = arithmetic_source(ArithmeticConfig(), 0, 1, train_size=10, test_size=3)
    assert len(source.split("test")) == 3 and source.size("train") == 10
    assert [p.id for p in source.split("test")[0:2]] == ["arith-test-1-0", "arith-test-1-1"]
    with pytest.raises(IndexError, match=r"arithmetic/test: index 3 out of range \[0, 3\)"):
        source.get("test", 3)
    with pytest.raises(TaskSpecError,
                       match=r"split must be one of 'train', 'test', got 'tets'. Did you mean 'test'"):
        source.get("tets", 0)


def test_reasoning_gym_source_is_deterministic_and_disjoint():
    a = reasoning_gym_source("basic_arithmetic", {}, 0, 10**9, train_size=200, test_size=50)
    b = reasoning_gym_source("basic_arithmetic", {}, 0, 10**9, train_size=200, test_size=50)
    assert a.get("train", 3) == b.get("train", 3)
    test = {a.get("test", i).question for i in range(50)}
    assert not test & {a.get("train", i).question for i in range(200)}
    entry = a.get("test", 0).meta["entry"]
    assert entry["answer"] == a.get("test", 0).answer


def test_reasoning_gym_errors():
    with pytest.raises(TaskSpecError, match=r"field 'source.dataset' must be a reasoning-gym dataset name, "
                                             r"got 'chain_summ' \(str\). Did you mean 'chain_sum'\?"):
        reasoning_gym_dataset("chain_summ", {}, 0, 10)
    with pytest.raises(TaskSpecError, match=r"field 'source.options' must be options that reasoning-gym's "
                                             r"'chain_sum' accepts, got \{'no_such_option': 1\}"):
        reasoning_gym_dataset("chain_sum", {"no_such_option": 1}, 0, 10)


def test_record_to_problem_fields_and_solution_segments():
    fields = RecordFields(question_field="q", answer_field="a", solution_field="steps", id_field="key")
    problem = record_to_problem({"q": "1+1?", "a": 2.0, "steps": "1 + 1 = 2.\n\nThe answer is \\boxed{2}.",
                                 "key": "k1", "extra": 5}, fields, "f:1", "default")
    assert problem == Problem(id="k1", question="1+1?", answer="2",
                              solution=("1 + 1 = 2.\n\n", "The answer is \\boxed{2}.\n\n"),
                              meta={"key": "k1", "extra": 5})
    with pytest.raises(TaskSpecError,
                       match=r"f:3: record has no field 'q'. Did you mean 'qq'\? Fields: qq, a"):
        record_to_problem({"qq": "x", "a": "1"}, fields, "f:3", "d")
    with pytest.raises(TaskSpecError,
                       match=r"f:4: field 'steps' must be a string or a list of strings, got 3"):
        record_to_problem({"q": "x", "a": "1", "steps": 3}, fields, "f:4", "d")


def test_read_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n\n{"question": oops}\n')
    with pytest.raises(TaskSpecError, match=r"bad.jsonl:3: invalid JSON \(Expecting value at column 14\)"):
        read_jsonl(bad)
    bad.write_text('[1, 2]\n')
    with pytest.raises(TaskSpecError,
                       match=r"bad.jsonl:1: a record must be a JSON object, got \[1, 2\] \(list\)"):
        read_jsonl(bad)


def _records(n):
    return [(f"mem:{i}", {"question": f"q{i}", "answer": str(i), "part": "test" if i % 4 == 0 else "train"})
            for i in range(n)]


def test_record_source_seeded_partition():
    source = record_source("mem", lambda: _records(20), None, RecordFields(), test_fraction=0.25,
                           partition_seed=3, train_size=None, test_size=None)
    train = [source.get("train", i).question for i in range(source.size("train"))]
    test = [source.get("test", i).question for i in range(source.size("test"))]
    assert (len(train), len(test)) == (15, 5)  # round(20 · 0.25) = 5
    assert sorted(train + test, key=lambda q: int(q[1:])) == [f"q{i}" for i in range(20)]
    again = record_source("mem", lambda: _records(20), None, RecordFields(), test_fraction=0.25,
                          partition_seed=3, train_size=None, test_size=None)
    assert [again.get("test", i).question for i in range(5)] == test
    other = record_source("mem", lambda: _records(20), None, RecordFields(), test_fraction=0.25,
                          partition_seed=4, train_size=None, test_size=None)
    assert [other.get("test", i).question for i in range(5)] != test


def test_record_source_split_field_file_and_caps():
    by_field = record_source("mem", lambda: _records(8), None, RecordFields(split_field="part"), test_fraction=0.5,
                             partition_seed=0, train_size=4, test_size=None)
    assert [by_field.get("test", i).question for i in range(2)] == ["q0", "q4"]
    assert by_field.size("train") == 4  # 6 train records capped at 4
    by_file = record_source("mem", lambda: _records(3), lambda: _records(2), RecordFields(),
                            test_fraction=0.5, partition_seed=0, train_size=None, test_size=None)
    assert (by_file.size("train"), by_file.size("test")) == (3, 2)
    bad = record_source("mem", lambda: [("mem:0", {"question": "q", "answer": "1", "part": "dev"})], None,
                        RecordFields(split_field="part"), test_fraction=0.5, partition_seed=0, train_size=None,
                        test_size=None)
    with pytest.raises(TaskSpecError,
                       match=r"mem:0: field 'part' must be 'train' or 'test', got 'dev' \(str\)"):
        bad.size("train")
    one = record_source("one", lambda: _records(1), None, RecordFields(), test_fraction=0.2, partition_seed=0,
                        train_size=None, test_size=None)
    with pytest.raises(TaskSpecError, match=r"one: the test split is empty \(1 records\)"):
        one.size("test")


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": i}) for i in range(4)) + "\n")
    records = read_jsonl(path)
    assert [w for w, _ in records] == [f"{path}:{i}" for i in range(1, 5)]
    assert records[2][1] == {"question": "q2", "answer": 2}


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q", "answer": null}', r"data.jsonl:1: field 'answer' must be a non-empty string or a finite "
                                          r"number, got None \(NoneType\)"),
    ('{"question": "q", "answer": ""}', r"field 'answer' must be a non-empty string or a finite number, got ''"),
    ('{"question": ["a", "b"], "answer": "1"}', r"field 'question' must be a non-empty string, got \['a', 'b'\]"),
    ('{"question": "q", "answer": {"x": 1}}', r"field 'answer' must be .*, got \{'x': 1\} \(dict\)"),
])
def test_records_need_real_questions_and_answers(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TaskSpecError, match=message):
        record_to_problem(read_jsonl(path)[0][1], RecordFields(), read_jsonl(path)[0][0], "p")


def test_tasks_check_rejects_an_inline_null_answer_and_duplicate_keys(tmp_path):
    from repro_env.tasks import check_task_file

    path = tmp_path / "task.yaml"
    path.write_text("id: Null-v0\nsource: {kind: inline, items: [{question: q, answer: 1}, "
                    "{question: q2, answer: null}]}\n")
    with pytest.raises(TaskSpecError, match=r"Null-v0: source.items\[1\]: field 'answer' must be a non-empty string"):
        check_task_file(path)
    path.write_text("id: Dup-v0\nsource: {kind: inline, items: [{question: q, answer: 1}]}\nid: Other-v0\n")
    with pytest.raises(TaskSpecError, match=r"task.yaml:3: invalid YAML: duplicate key 'id' \(first at line 1\)"):
        check_task_file(path)


def test_numbers_are_answers(tmp_path):
    record = {"question": "q", "answer": 4.0}
    assert record_to_problem(record, RecordFields(), "here", "p").answer == "4"
    assert record_to_problem({**record, "answer": 2.5}, RecordFields(), "here", "p").answer == "2.5"


@pytest.mark.parametrize(("number", "text"), [
    (0.00005, "0.00005"), (1e-7, "0.0000001"), (72.0, "72"), (-2.5, "-2.5"), (1e22, "10000000000000000000000"),
    (-0.0, "0"), (0.1, "0.1"), (123456.789, "123456.789"), (1.5e-10, "0.00000000015"),
])
def test_number_answers_are_written_in_plain_decimal_and_verify_by_value(number, text):
    """str(float) gave '5e-05', which no boxed answer a model writes verified against."""
    from repro_env.verify import verify_answer

    answer = record_to_problem({"question": "q", "answer": number}, RecordFields(), "here", "p").answer
    assert answer == text and float(answer) == number
    assert verify_answer(f"\\boxed{{{text}}}", answer)


def test_small_answers_verify_in_the_forms_people_write():
    from repro_env.verify import outcome_reward

    gold = record_to_problem({"question": "q", "answer": 5e-05}, RecordFields(), "here", "p").answer
    for response in ("So \\boxed{0.00005}.", "So \\boxed{1/20000}.", "So \\boxed{5\\times10^{-5}}.",
                     "So \\boxed{\\frac{1}{20000}}."):
        assert outcome_reward(response, gold) == 1.0, response
    assert outcome_reward("So \\boxed{0.0005}.", gold) == 0.0


def test_a_binary_jsonl_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "1"}\n\xff\xfe\n')
    with pytest.raises(TaskSpecError, match=r"data.jsonl:2: not UTF-8 text \(invalid start byte at byte 0"):
        read_jsonl(path)


def test_a_json_integer_of_more_than_4300_digits_is_a_located_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q", "answer": ' + "1" * 5000 + "}\n")
    with pytest.raises(TaskSpecError, match=r"data.jsonl:2: invalid JSON \(Exceeds the limit \(4300 digits\)"):
        read_jsonl(path)
