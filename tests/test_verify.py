"""Answer extraction and verification: the regression cases of the task issue."""

import threading
import time

import pytest

from repro_env.verify import (
    exact_match,
    extract_answer,
    normalize_answer,
    outcome_reward,
    to_number,
    verify_answer,
)

HANG = "\\boxed{9^{9^{9^{9}}}}"  # sympy evaluates the power tower: math-verify never returns


@pytest.mark.parametrize(("text", "expected"), [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and a broken \\boxed{4", "3"),
    ("The answer is 12 apples.", "12 apples"),
    ("Final answer: 3.5.", "3.5"),
    ("The answer is **42**.", "42"),
    ("so it is **17**", "17"),
    ("work\n#### 28080", "28080"),
    ("no answer here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_task_pattern_group_wins():
    assert extract_answer("ANSWER: 5 ... ANSWER: 6 \\boxed{9}", r"ANSWER: (\d+)") == "6"
    assert extract_answer("x <ans>7</ans>", r"<ans>(?P<answer>.*?)</ans>") == "7"
    # A pattern without a group only marks the end of an episode; extraction falls back to \boxed.
    assert extract_answer("\\boxed{8}", r"\\boxed\{") == "8"


@pytest.mark.parametrize(("pred", "gold"), [
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{1000}", "1,000"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{1}{2}}", "1/2"),
    ("The answer is 12 apples.", "12"),
    ("\\boxed{12\\text{ cm}}", "12"),
    ("\\boxed{\\$12}", "12"),
    ("\\boxed{50\\%}", "50"),
    ("The answer is **42**.", "42"),
    ("\\boxed{x = 5}", "5"),
    ("\\boxed{-7}", "-7"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),  # symbolic: needs math-verify
])
def test_verify_correct(pred, gold):
    assert verify_answer(pred, gold)


@pytest.mark.parametrize(("pred", "gold"), [
    ("\\boxed{3}", "4"),
    ("\\boxed{0.33}", "\\frac{1}{3}"),
    ("\\boxed{2x}", "2"),
    ("\\boxed{1,2}", "12"),
    ("\\boxed{\\sqrt{8}}", "3"),
])
def test_verify_incorrect(pred, gold):
    assert not verify_answer(pred, gold)


def test_to_number_and_normalize():
    assert to_number("-1,000.5") == -1000.5
    assert to_number("\\frac{3}{4}") == 0.75
    assert to_number("12 apples") == 12
    assert to_number("2 + 3") is None
    assert normalize_answer("$\\text{5 dollars}$.") == "5 dollars"
    assert exact_match("Paris", "\\text{paris}")


def test_hanging_parse_times_out_and_counts_as_incorrect():
    start = time.monotonic()
    assert verify_answer(HANG, "1", timeout_s=0.5) is False
    assert time.monotonic() - start < 10.0  # startup of a fresh worker + the 0.5 s limit
    assert verify_answer("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # the restarted worker still works


def test_timeout_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(verify_answer(HANG, "1", timeout_s=0.5)))
    thread.start()
    thread.join(timeout=15.0)
    assert results == [False]


def test_outcome_reward_modes():
    assert outcome_reward("so \\boxed{1,000}", "1000") == 1.0
    assert outcome_reward("so \\boxed{999}", "1000") == 0.0
    assert outcome_reward("\\boxed{Paris}", "paris", verifier="exact") == 1.0
    assert outcome_reward("no box", "paris", verifier="exact") == 0.0
    assert outcome_reward("\\boxed{ab}", "a", verifier="reasoning_gym",
                          answer_scorer=lambda ans: 0.5 if ans == "ab" else 0.0) == 0.5
    with pytest.raises(ValueError, match="needs the dataset's answer_scorer"):
        outcome_reward("\\boxed{1}", "1", verifier="reasoning_gym")


def _verify_in_child(out):
    out.put((verify_answer(HANG, "1", timeout_s=0.5), verify_answer("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")))


def test_timeout_works_in_a_daemonic_worker_process():
    # SubprocVecEnv workers are daemonic: they may not start multiprocessing children.
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_verify_in_child, args=(out,), daemon=True)
    child.start()
    assert out.get(timeout=30) == (False, True)
    child.join(timeout=10)
    assert child.exitcode == 0
