"""Answer extraction and verification: the regression set of issue 11 and agreement with math-verify."""

import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from math_verify import parse, verify

from repro_env.verify import (
    boxed_contents,
    compare_numbers,
    exact_match,
    extract_answer,
    normalize_answer,
    outcome_reward,
    verify_answer,
)

HANG = "\\boxed{9^{9^{9^{9}}}}"  # sympy evaluates the power tower: math-verify never returns

R1 = "<think>\nLet me compute: 3 + 4 = 7, and n = 2 gives 9.\n</think>\n\n"  # R1-Distill / Qwen3 think block


def math_verify_verdict(response: str, gold: str) -> bool:
    """math-verify's own verdict, called as its README shows: the gold as LaTeX, the response as written.

    A bare answer with no number or LaTeX math environment that math-verify could find (``y=2x``)
    is read as LaTeX, as ``verify_answer`` reads a response that states no answer.
    """
    prediction = parse(response) or parse("\\boxed{" + response + "}")
    return verify(parse("\\boxed{" + gold + "}"), prediction)


# (class, response, gold, expected verdict): math-verify gives the same verdict on every row.
CASES = [
    # extraction: the last \boxed / \fbox
    ("boxed", "So the area is \\boxed{12}.", "12", True),
    ("boxed", "\\fbox{7}", "7", True),
    ("boxed", R1 + "**Final Answer**\n\\[\n\\boxed{\\dfrac{3}{4}}\n\\]", "\\frac34", True),
    ("boxed", R1 + "Therefore, the answer is $\\boxed{8}$.", "9", False),
    # extraction: every \boxed when the gold is a set or tuple
    ("boxes", "\\boxed{1},\\boxed{2},\\boxed{3}", "\\{1,2,3\\}", True),
    ("boxes", "The roots are $\\boxed{-2}$ and $\\boxed{3}$.", "-2, 3", True),
    ("boxes", "The roots are $\\boxed{-2}$ and $\\boxed{4}$.", "-2, 3", False),
    # extraction: "final answer is X" inside a sentence (Minerva few-shot format)
    ("final-answer", "Final Answer: The final answer is $100$. I hope it is correct.", "100", True),
    ("final-answer", "Final Answer: The largest $n$ is 34.", "34", True),
    ("final-answer", "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", True),
    ("final-answer", "Thus, the final answer is 72 dollars.", "72", True),
    ("final-answer", "Final Answer: The final answer is $(3,-1)$. I hope it is correct.", "(3,-1)", True),
    # extraction: "Answer: X", bold, ####
    ("answer", "Answer: 5", "5", True),
    ("answer", "**Answer:** $\\frac{7}{2}$", "3.5", True),
    ("answer", "The answer is 5 because 3 is odd.", "5", True),
    ("answer", "The answer is $5$, since it is odd.", "5", True),
    ("answer", "The answer is: 3.", "3", True),
    ("answer", "Answer: 6", "5", False),
    ("bold", "So she pays **18** dollars.", "18", True),
    ("gsm8k", "Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n#### 72", "72", True),
    ("gsm8k", "48 + 24 = 72\n#### 70", "72", False),
    # extraction: the answer after </think>
    ("think", R1 + "The answer is 7.", "7", True),
    ("think", R1 + "So the total is $\\boxed{10}$.", "10", True),
    ("think", "<think>\nMaybe 5? No: 2 + 4 = 6.\n</think>\n\nThe total is 6.", "6", True),
    # normalisation: \!, {,}, thousands separators
    ("thousands", "\\boxed{10000}", "10,\\!000", True),
    ("thousands", "\\boxed{10,\\!000}", "10000", True),
    ("thousands", "\\boxed{1{,}234{,}567}", "1234567", True),
    ("thousands", "\\boxed{1,000}", "1000", True),
    ("thousands", "\\boxed{1,2}", "12", False),
    # normalisation: \text{}, units, currency
    ("units", "\\boxed{12\\text{ cm}}", "12", True),
    ("units", "\\boxed{18 \\text{ eggs}}", "18", True),
    ("units", "\\boxed{\\$18.90}", "18.90", True),
    ("units", "The answer is 12 apples.", "12", True),
    ("units", "\\boxed{\\text{(C)}}", "C", True),
    ("units", "\\boxed{\\textbf{(B)}}", "\\text{(C)}", False),
    # normalisation: degrees and percentages
    ("degrees", "\\boxed{90^\\circ}", "90", True),
    ("degrees", "\\boxed{45}", "45^{\\circ}", True),
    ("percent", "\\boxed{50\\%}", "50", True),
    ("percent", "\\boxed{5\\%}", "0.05", True),
    ("percent", "\\boxed{12.5\\%}", "12.5", False),
    # the fast path follows math-verify's rounding: 6 decimals, but a decimal equals an integer exactly
    ("rounding", "\\boxed{0.333333}", "1/3", True),
    ("rounding", "\\boxed{0.3333333}", "\\frac{1}{3}", True),
    ("rounding", "\\boxed{0.333}", "\\frac{1}{3}", False),
    ("rounding", "\\boxed{0.3333335}", "\\frac{1}{3}", False),
    ("rounding", "\\boxed{2.5000001}", "\\frac52", True),
    ("rounding", "\\boxed{1.0000001}", "1", False),
    ("rounding", "\\boxed{2.0}", "2", True),
    ("rounding", "\\boxed{3.141593}", "\\pi", True),
    ("rounding", "\\boxed{3.14}", "\\pi", False),
    # equations and relations are compared as equations
    ("equation", "y=-\\frac12x+\\frac34", "2x+4y-3=0", True),
    ("equation", "\\boxed{2x+4y-3=0}", "y=-\\frac12x+\\frac34", True),
    ("equation", "\\boxed{y=2x+1}", "2x+1", True),
    ("equation", "\\boxed{x = 5}", "5", True),
    ("equation", "\\boxed{5}", "x=5", True),
    ("equation", "\\boxed{y=5}", "x=5", False),
    ("equation", "\\boxed{y=2x-1}", "y=2x+1", False),
    ("relation", "\\boxed{x > 2}", "x>2", True),
    ("relation", "\\boxed{x \\geq 1}", "x > 1", False),
    # sets, tuples and intervals as math-verify compares them
    ("set", "\\boxed{\\{3, 2, 1\\}}", "\\{1,2,3\\}", True),
    ("set", "\\boxed{1,2}", "\\{1,2,3\\}", False),
    ("tuple", "\\boxed{(3,2)}", "(2,3)", False),
    ("tuple", "\\boxed{x=1, y=2}", "(1,2)", True),
    ("interval", "\\boxed{[-2, 5)}", "[-2,5)", True),
    ("interval", "\\boxed{(-2,5]}", "[-2,5)", False),
    ("interval", "\\boxed{(-\\infty,3]}", "x \\le 3", True),
    # symbolic answers
    ("symbolic", "\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("symbolic", "\\boxed{(x+1)^2}", "x^2+2x+1", True),
    ("symbolic", "\\boxed{\\sqrt{8}}", "3", False),
    ("symbolic", "\\boxed{2x}", "2", False),
]

# (why, response, gold, expected verdict): deliberate differences, math-verify says the opposite.
DIFFERENCES = [
    # A model that boxes an intermediate value and then its answer means the last box.
    ("last box", "First \\boxed{3}, then the total is \\boxed{5}.", "5", True),
    # Whatever is written inside the think block is scratch work; the answer follows it.
    ("after think", "<think>\nIs it \\boxed{5}? No.\n</think>\n\nThe answer is 7.", "7", True),
    # A thin space between digit groups is a thousands separator (SI style), not a product.
    ("thin space", "\\boxed{10\\,000}", "10000", True),
    # Words after a number are its unit, whether or not math-verify's unit list has them.
    ("unit word", "\\boxed{5 eggs}", "5", True),
    ("degree sign", "\\boxed{90°}", "90", True),
    # A comma never reads as a decimal point: in "3,5" it separates two answers, as in \boxed{}.
    # The value right after "the answer is" is the answer, not a later "= 3" in the same sentence.
    ("answer then =", "The answer is $5$, since $x = 3$.", "5", True),
    ("decimal comma", "The answer is 3,5.", "3.5", False),
]


@pytest.fixture(scope="module", autouse=True)
def _quiet_math_verify():
    # math-verify warns on every timeout-free call and on unparsable input; the verdicts are what count.
    level = logging.getLogger("math_verify").level
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("math_verify").setLevel(level)


@pytest.mark.parametrize(("kind", "response", "gold", "expected"), CASES, ids=[row[0] for row in CASES])
def test_regression_set_agrees_with_math_verify(kind, response, gold, expected):
    assert math_verify_verdict(response, gold) is expected  # the table itself is math-verify's verdict
    assert verify_answer(response, gold) is expected


@pytest.mark.parametrize(("why", "response", "gold", "expected"), DIFFERENCES, ids=[row[0] for row in DIFFERENCES])
def test_deliberate_differences_from_math_verify(why, response, gold, expected):
    assert math_verify_verdict(response, gold) is not expected  # documented in verify.py's docstring
    assert verify_answer(response, gold) is expected


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
    ("Final Answer: The final answer is $100$. I hope it is correct.", "100"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("**Answer:** $\\frac{7}{2}$", "\\frac{7}{2}"),
    ("The answer is $\\$72$.", "\\$72"),
    ("The answer is 5 because 3 is odd.", "5"),
    ("Answer: the total is $42$.", "42"),
    ("The answer is $1$ or $2$.", "1, 2"),
    ("<think>\nmaybe \\boxed{5}\n</think>\n\nThe answer is 7.", "7"),
    ("<think>\nso \\boxed{5}\n</think>\n\n", "5"),
    ("no answer here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_every_box_for_a_collection():
    assert extract_answer("\\boxed{1},\\boxed{2}", all_boxes=True) == "1, 2"
    assert extract_answer("\\boxed{1},\\boxed{2}") == "2"


def test_extract_answer_task_pattern_group_wins():
    assert extract_answer("ANSWER: 5 ... ANSWER: 6 \\boxed{9}", r"ANSWER: (\d+)") == "6"
    assert extract_answer("x <ans>7</ans>", r"<ans>(?P<answer>.*?)</ans>") == "7"
    # A pattern without a group only marks the end of an episode; extraction falls back to \boxed.
    assert extract_answer("\\boxed{8}", r"\\boxed\{") == "8"


@pytest.mark.parametrize(("pred", "gold"), [
    ("\\boxed{1000}", "1,000"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{\\dfrac{1}{2}}", "1/2"),
    ("\\boxed{\\$12}", "12"),
    ("The answer is **42**.", "42"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("42", "42"),  # a bare answer
])
def test_verify_correct(pred, gold):
    assert verify_answer(pred, gold)


@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("0.333333", "1/3", None),  # within 1e-6: math-verify's 6-decimal rounding decides (True)
    ("0.33", "1/3", False),  # more than 1e-6 apart never round alike
    ("2.0", "2", True),
    ("2.0000001", "2", False),  # a decimal equals an integer only exactly
    ("2.5000001", "5/2", None),
    ("2.0000001", "2.0", None),  # within 1e-6 and not exact: math-verify's rounding decides
    ("50%", "50", None),  # percentages are math-verify's
    ("x = 5", "5", None),
    ("12 apples", "12", True),
])
def test_compare_numbers(pred, gold, expected):
    assert compare_numbers(pred, gold) is expected


def test_plain_numbers_and_normalize():
    assert compare_numbers("-1,000.5", "-1000.5")
    assert compare_numbers("\\frac{3}{4}", "0.75")
    assert compare_numbers("2 + 3", "5") is None
    assert normalize_answer("$\\text{5 dollars}$.") == "5 dollars"
    assert normalize_answer("10,\\!000") == normalize_answer("10\\,000") == "10000"
    assert normalize_answer("1{,}234{,}567") == "1234567"
    assert normalize_answer("\\left(1, 2\\right)") == "(1, 2)"  # a comma and a space is a list
    assert normalize_answer("45^{\\circ}") == normalize_answer("45°") == "45"
    assert normalize_answer("x = 5") == "x = 5"  # an equation stays one
    assert exact_match("Paris", "\\text{paris}")


def test_hanging_parse_times_out_and_counts_as_incorrect():
    start = time.monotonic()
    assert verify_answer(HANG, "1", timeout_s=0.5) is False
    assert time.monotonic() - start < 10.0  # startup of a fresh worker + the 0.5 s limit
    assert verify_answer("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")  # the restarted worker still works


def test_a_fresh_worker_is_warm_before_its_first_timed_call():
    """The first call after a (re)start used to pay math-verify's lazy loading (measured 0.26 s
    against 0.002 s warm) out of its own timeout_s; the worker now runs symbolic checks before it
    says ready, and says how many passed. (The time itself is a figure, not asserted here.)"""
    from repro_env.verify import _WARM_UP, _MathVerifyWorker

    worker = _MathVerifyWorker()
    try:
        worker._ensure_started()
        assert worker.warmed == len(_WARM_UP)  # every warm-up check verified: the grammar and sympy loaded
        assert worker.verify("\\sqrt{18}", "3\\sqrt{2}", timeout_s=30.0) is True
    finally:
        worker.stop()


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


def test_numbers_of_more_than_4300_digits_are_wrong_answers_not_crashes():
    """Python refuses int("1" * 5000) (its int-string limit); a degenerate completion must not kill a run."""
    huge = "1" * 5000
    assert compare_numbers(huge, "42") is None
    assert verify_answer(f"So \\boxed{{{huge}}}.", "42") is False
    assert verify_answer(f"\\boxed{{{huge}}}", huge) is True  # the same string still verifies


def _boxed_by_scanning(text: str) -> list[str]:
    """The old reference: from each box, scan to the brace that balances it (quadratic)."""
    import re

    contents = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth = 1
        for pos in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                contents.append(text[match.end():pos])
                break
    return contents


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "\\fbox {", "{", "}", "7", " "]), max_size=40).map("".join))
def test_boxed_contents_in_one_pass_equal_the_scan_from_each_box(text):
    assert boxed_contents(text) == _boxed_by_scanning(text)


def test_many_unclosed_boxes_are_read_in_one_pass():
    """issue 28: 20k open boxes took more than 150 s; one closed box at the end is still found."""
    text = "\\boxed{" * 20_000 + " so \\boxed{42}"
    assert boxed_contents(text) == ["42"] and extract_answer(text) == "42"


@pytest.mark.parametrize(("response", "gold", "expected"), [
    ("\\boxed{2 hundred}", "200", True), ("\\boxed{2 hundred}", "2", False),
    ("The answer is 2 million.", "2000000", True), ("The answer is 2 million.", "2", False),
    ("\\boxed{2.5 million}", "2500000", True), ("\\boxed{4 thousand}", "4000", True),
    ("\\boxed{2 dozen}", "24", True), ("\\boxed{2 dozen}", "2", False),
    ("\\boxed{2 and a half}", "2.5", True), ("\\boxed{2 and a half}", "2", False),
    ("\\boxed{3 squared}", "3", False), ("\\boxed{3 squared}", "9", False),
    ("\\boxed{5 below zero}", "5", False), ("\\boxed{5 or more}", "5", False), ("\\boxed{4 pi}", "4", False),
    ("\\boxed{5 or more}", "5 or more", True),  # the gold verbatim
    ("\\boxed{5 eggs}", "5", True), ("The answer is 12 apples in total.", "12", True),  # units still go
])
def test_words_that_change_a_number_are_never_dropped_as_units(response, gold, expected):
    """issue 28: any word after a number was dropped as a unit, so \\boxed{2 hundred} verified as 2."""
    assert verify_answer(response, gold) is expected

