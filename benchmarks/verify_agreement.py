"""Agreement of ``verify_answer`` with math-verify's own verdicts on a broad, mixed set of cases.

    python benchmarks/verify_agreement.py            # the figure and every disagreement
    python benchmarks/verify_agreement.py --all      # every case

The set crosses answers written the way MATH and GSM8K golds are (``10,\\!000``, ``\\frac{1}{3}``,
``\\text{(C)}``, ``[-2, 5)``, ``y = 2x + 1``) with the response formats of R1-Distill, Qwen3,
Minerva-style few-shot prompts, GSM8K and plain prose, right and wrong answers alike; the
regression table of ``tests/test_verify.py`` is added to it, with its deliberate differences. The reference verdict is
``math_verify_verdict`` from that test module (math-verify called as its README shows).
A disagreement where math-verify says False and we say True is a false positive.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro_env.verify import verify_answer  # noqa: E402
from tests.test_verify import CASES, DIFFERENCES, math_verify_verdict  # noqa: E402

# (gold, prediction as the model would write it)
ANSWERS = [
    ("72", "72"), ("72", "72.0"), ("72", "\\$72"), ("72", "72 \\text{ dollars}"), ("72", "27"),
    ("10,\\!000", "10000"), ("10000", "10,\\!000"), ("10000", "10{,}000"), ("10,\\!000", "1000"),
    ("18.90", "\\$18.90"), ("18.90", "18.9"), ("-7", "-7"), ("-7", "7"),
    ("1/3", "0.333333"), ("\\frac13", "0.3333"), ("\\frac{1}{3}", "\\frac{1}{3}"), ("1/3", "0.33"),
    ("\\frac{3}{4}", "0.75"), ("\\dfrac{3}{4}", "\\frac34"), ("\\frac{3}{4}", "\\frac{4}{3}"),
    ("0.5", "\\frac{1}{2}"), ("2", "2.0000001"), ("\\frac{5}{2}", "2.5000001"), ("2.5", "2.50"),
    ("50\\%", "50"), ("50\\%", "0.5"), ("25", "25\\%"), ("12.5\\%", "12.5"), ("20\\%", "30\\%"),
    ("90^\\circ", "90"), ("45", "45^\\circ"), ("30^\\circ", "\\frac{\\pi}{6}"), ("60^\\circ", "60^{\\circ}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("2\\sqrt{2}", "2\\sqrt{3}"),
    ("x^2+2x+1", "(x+1)^2"), ("3\\pi", "3\\pi"), ("\\pi", "3.14"), ("\\pi", "3.1415927"),
    ("y=-\\frac12x+\\frac34", "2x+4y-3=0"), ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"),
    ("y=2x+1", "2x+1"), ("x=5", "5"), ("5", "x=5"), ("y=2x+1", "y=2x-1"), ("x=5", "y=5"),
    ("\\{1,2,3\\}", "1,2,3"), ("\\{1,2,3\\}", "\\{3, 2, 1\\}"), ("\\{1,2,3\\}", "1,2"),
    ("(1,2)", "(1, 2)"), ("(2,3)", "(3,2)"), ("(1,2)", "x=1, y=2"),
    ("[-2,5)", "[-2, 5)"), ("[-2,5)", "(-2,5]"), ("(-\\infty,3]", "(-\\infty, 3]"),
    ("x \\le 3", "(-\\infty,3]"), ("x>2", "x > 2"), ("x \\geq 1", "x > 1"),
    ("\\text{(C)}", "C"), ("C", "\\text{(C)}"), ("\\text{(C)}", "B"), ("\\text{Paris}", "Paris"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
]

PLAIN_NUMBER = re.compile(r"-?[\d.,/]+%?")  # what a GSM8K-style prose answer carries
REASONING = "We have $3 + 4 = 7$, and checking $n = 2$ gives $9$ as well."
TEMPLATES = {  # name: (template, whether the answer may be LaTeX; else it must be a plain number)
    "r1-distill": ("<think>\n" + REASONING + "\n</think>\n\nSo we are done.\n\n"
                   "**Final Answer**\n\\[\n\\boxed{{{a}}}\n\\]", True),
    "qwen3": ("<think>\nOkay. " + REASONING + "\n</think>\n\nTherefore, the answer is $\\boxed{{{a}}}$.", True),
    "math": (REASONING + " Hence the answer is $\\boxed{{{a}}}$.", True),
    "minerva": (REASONING + "\nFinal Answer: The final answer is ${a}$. I hope it is correct.", True),
    "answer-colon": (REASONING + "\n\n**Answer:** ${a}$", True),
    "gsm8k": ("She buys 3 bags for 4 dollars each, 3 * 4 = 12.\n#### {a}", False),
    "prose": ("First 3 * 4 = 12, then 12 + 5 = 17. The answer is {a}.", False),
    "bold": ("First 3 * 4 = 12. So the total is **{a}**.", False),
}


def broad_cases() -> list[tuple[str, str, str]]:
    """(class, response, gold): every answer in every format that can carry it."""
    cases = []
    for name, (template, latex) in TEMPLATES.items():
        for gold, pred in ANSWERS:
            if latex or PLAIN_NUMBER.fullmatch(pred):
                cases.append((name, template.format(a=pred), gold))
    return cases + [(kind, response, gold) for kind, response, gold, _ in CASES + DIFFERENCES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="print every case, not only disagreements")
    parser.add_argument("--smoke", action="store_true", help="tiny budget: the first 20 cases (CI)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cases = broad_cases()[:20] if args.smoke else broad_cases()
    rows, start = [], time.perf_counter()
    for kind, response, gold in cases:
        ours, reference = verify_answer(response, gold), math_verify_verdict(response, gold)
        rows.append((kind, response, gold, ours, reference))
    elapsed = time.perf_counter() - start
    agree = sum(ours == ref for *_, ours, ref in rows)
    false_pos = sum(ours and not ref for *_, ours, ref in rows)
    false_neg = sum(ref and not ours for *_, ours, ref in rows)
    print(f"{'class':<14} {'ours':<5} {'m-v':<5} {'gold':<24} response")
    for kind, response, gold, ours, ref in rows:
        if args.all or ours != ref:
            print(f"{kind:<14} {ours!s:<5} {ref!s:<5} {gold!r:<24} {response[-70:]!r}")
    print(f"\nagreement: {agree}/{len(rows)} = {agree / len(rows):.1%}  "
          f"(false positives {false_pos}, false negatives {false_neg}; {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
