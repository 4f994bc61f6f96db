"""The arithmetic word-problem generator: determinism, correct reference solutions, overthinking."""

from __future__ import annotations

import random
import re

import pytest

from repro_env.arithmetic import (
    ArithmeticConfig,
    evaluate_step,
    generate_problem,
    overthink,
    solution_steps,
)
from repro_env.errors import ConfigError
from repro_env.problems import DEFAULT_DELIMITER, Problem

BACKTRACK = re.compile(r"wait|hmm|actually|let me re-check|let me double-check|alternatively|no,", re.I)
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def boxed(segments) -> str:
    return BOXED.findall("".join(segments))[-1]


def check_solution(problem: Problem) -> None:
    """Every step's arithmetic is right, results chain in order, and the box holds the answer."""
    steps = solution_steps(problem.solution)
    assert [op for _, _, op, _, _ in steps] == list(problem.meta["ops"])
    assert [c for *_, c in steps] == list(problem.meta["results"])
    for _, a, op, b, c in steps:
        assert evaluate_step(a, op, b) == c
    assert boxed(problem.solution) == problem.answer == str(problem.meta["results"][-1])
    assert all(s.endswith(DEFAULT_DELIMITER) for s in problem.solution)


def test_example_problem_is_a_word_problem_with_one_segment_per_operation():
    p = generate_problem(ArithmeticConfig(), seed=0, index=1)
    assert p.id == "arith-train-0-1"
    assert p.question.endswith("now?") and " has " in p.question
    assert len(p.solution) == p.meta["num_ops"] + 1
    assert p.solution[-1] == f"The answer is \\boxed{{{p.answer}}}.\n\n"


def test_problem_is_a_pure_function_of_seed_split_index():
    config = ArithmeticConfig()
    later = generate_problem(config, seed=3, index=7, split="test")
    _ = [generate_problem(config, seed=9, index=i) for i in range(5)]  # no hidden state between calls
    assert generate_problem(config, seed=3, index=7, split="test") == later


def test_seeds_splits_and_indices_give_different_problems():
    config = ArithmeticConfig()
    base = generate_problem(config, 0, 0).question
    assert generate_problem(config, 1, 0).question != base
    assert generate_problem(config, 0, 0, split="test").question != base
    assert generate_problem(config, 0, 1).question != base
    questions = {generate_problem(config, 0, i).question for i in range(200)}
    assert len(questions) == 200


@pytest.mark.parametrize("config", [
    ArithmeticConfig(),
    ArithmeticConfig(min_ops=3, max_ops=3, max_value=50, max_result=500),
    ArithmeticConfig(operations=("+", "-", "*", "/"), bags_share=0.0),
    ArithmeticConfig(operations=("-",), min_ops=1, max_ops=2),
])
def test_reference_solutions_are_correct_and_ops_in_range(config):
    for i in range(150):
        p = generate_problem(config, seed=5, index=i)
        check_solution(p)
        assert config.min_ops <= p.meta["num_ops"] <= config.max_ops
        assert set(p.meta["ops"]) <= set(config.operations)
        assert all(0 <= v <= config.max_result for v in (p.meta["start"], *p.meta["results"]))


def test_division_only_when_exact():
    config = ArithmeticConfig(operations=("+", "/"), max_multiplier=3)
    divisions = [s for i in range(200) for s in solution_steps(generate_problem(config, 2, i).solution)
                 if s[2] == "/"]
    assert divisions, "the generator never divided"
    assert all(a % b == 0 and a // b == c for _, a, _, b, c in divisions)


def test_allow_negative_reaches_below_zero_within_range():
    config = ArithmeticConfig(operations=("-",), min_ops=4, max_ops=4, max_value=20, max_result=40,
                              allow_negative=True)
    problems = [generate_problem(config, 0, i) for i in range(100)]
    for p in problems:
        check_solution(p)
    results = [v for p in problems for v in p.meta["results"]]
    assert min(results) < 0 and min(results) >= -40


@pytest.mark.parametrize("kind", ["recheck", "false_start", "rumination"])
def test_overthinking_keeps_the_answer_and_adds_backtrack_segments(kind):
    config = ArithmeticConfig()
    for i in range(50):
        p = generate_problem(config, 0, i)
        verbose = overthink(p.solution, random.Random(i), kind, count=2)
        assert len(verbose) == len(p.solution) + 2
        assert verbose[-1] == p.solution[-1] and boxed(verbose) == p.answer
        assert all(s.endswith(DEFAULT_DELIMITER) for s in verbose)
        added = [s for s in verbose if s not in p.solution]
        assert sum(bool(BACKTRACK.search(s)) for s in added) >= 2


def test_recheck_repeats_a_finished_step_verbatim():
    solution = ("She gets 5 * 3 = 15 apples.\n\n", "12 + 15 = 27.\n\n", "The answer is \\boxed{27}.\n\n")
    verbose = overthink(solution, random.Random(0), "recheck")
    repeated = [s for s in verbose if "double-check" in s or "re-check" in s]
    assert len(repeated) == 1
    assert "5 * 3 = 15" in repeated[0] or "12 + 15 = 27" in repeated[0]


def test_false_start_writes_a_wrong_result_then_the_corrected_step():
    solution = ("12 + 15 = 27.\n\n", "The answer is \\boxed{27}.\n\n")
    verbose = overthink(solution, random.Random(1), "false_start")
    (_, a, op, b, wrong), (_, *corrected) = solution_steps(verbose)
    assert (a, op, b) == (12, "+", 15) and wrong != 27 and wrong >= 0
    assert corrected == [12, "+", 15, 27]
    assert BACKTRACK.search(verbose[1]) and verbose[2] == solution[1]


def test_overthink_rejects_unknown_kind_and_bad_count():
    with pytest.raises(ConfigError, match=r"field 'kind' must be one of 'recheck', .*got 'ramble' \(str\)"):
        overthink(("1 + 1 = 2.\n\n",), random.Random(0), "ramble")
    with pytest.raises(ConfigError, match=r"field 'count' must be an int >= 1, got 0 \(int\)"):
        overthink(("1 + 1 = 2.\n\n",), random.Random(0), "recheck", count=0)
    with pytest.raises(ConfigError, match=r"field 'solution' must be a solution with at least one"):
        overthink(("The answer is 2.\n\n",), random.Random(0), "recheck")


@pytest.mark.parametrize("kwargs, message", [
    ({"min_ops": 0}, r"field 'min_ops' must be an int >= 1, got 0 \(int\)"),
    ({"min_ops": 3, "max_ops": 2}, r"field 'max_ops' must be an int >= min_ops \(3\), got 2 \(int\)"),
    ({"min_value": 0}, r"field 'min_value' must be an int >= 1, got 0 \(int\)"),
    ({"max_value": 0}, r"field 'max_value' must be an int >= min_value \(1\), got 0 \(int\)"),
    ({"max_multiplier": 1}, r"field 'max_multiplier' must be an int >= 2, got 1 \(int\)"),
    ({"max_result": 39}, r"field 'max_result' must be an int >= 2 \* max_value \(40\), got 39 \(int\)"),
    ({"operations": ("+", "^")}, r"field 'operations' must be a non-empty tuple of distinct .*'\^'"),
    ({"operations": ("*", "/")}, r"field 'operations' must be a tuple containing '\+' or '-'"),
    ({"bags_share": 1.5}, r"field 'bags_share' must be a number in \[0, 1\], got 1.5 \(float\)"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ArithmeticConfig(**kwargs)
