"""Final answers: extract them from a response and check them against the ground truth.

The outcome reward of REPRO_SPEC §5 is ``R = 1`` when the final answer verifies against ``a``.

**Extraction** (:func:`extract_answer`), first rule that finds something wins:

1. the task's ``pattern``, when it has a capture group (group ``answer``, else group 1);
2. only the text after the last ``</think>`` is read from here on, when that text is not blank;
3. the last ``\\boxed{...}`` / ``\\fbox{...}``, or every box joined by commas when the gold is a
   set, tuple or list (``\\{1,2\\}``, ``(1,2)``, ``-2, 3``);
4. "final answer ... is X" (``Final Answer: The final answer is $100$. I hope it is correct.``,
   ``Final Answer: The largest $n$ is 34.``), then "answer is X" / "Answer: X" / "answer = X";
   X is the LaTeX of the math spans (``$...$``, ``\\(...\\)``, ``\\[...\\]``) that open the sentence
   after the anchor (several joined by ``,``/``and``/``or`` make a set), else the words up to the
   end of the sentence or the first clause break (``, because``, ``since``...);
5. the last bold ``**X**``, then ``#### X``;
6. nothing: math-verify reads the response its own way (its last number or math span).

**Checking** (:func:`verify_answer`), cheapest first:

1. plain numbers in the calling thread (:func:`compare_numbers`), by math-verify's rule: exact
   for integers and fractions, and a decimal equals an integer only exactly (``1.0000001`` ≠ ``1``);
   a decimal and a fraction or another decimal are equal when they round to the same 6 decimals
   (``0.333333`` = ``1/3``), so values more than 1e-6 apart differ here and closer ones that are
   not equal go to math-verify, whose rounding (and its ties) is then the rule;
2. equal normalised strings (:func:`normalize_answer`);
3. math-verify (``parse`` + ``verify``) in a worker process, on the extracted answer and the gold,
   each as LaTeX: equations stay equations (``y=-\\frac12x+\\frac34`` = ``2x+4y-3=0``; ``x = 5``
   = ``5`` by math-verify's assignment rule), sets, tuples, intervals, relations, percentages
   and symbolic forms are compared as math-verify compares them;
4. a hung math-verify call (sympy can spin for ever on ``9^{9^{9^{9}}}``) is cut off after
   ``timeout_s``: the worker is killed and restarted, and the answer counts as incorrect.

**Normalisation** for tiers 1 and 2 keeps the meaning: ``$``/``\\(``/``\\[`` delimiters, ``\\left``,
``\\right``, ``\\displaystyle``, bold and a final period go; ``\\!`` and ``{,}`` join what they
separate (``10,\\!000`` = ``10,000``); ``\\,`` ``\\;`` ``\\:`` ``~`` are spaces; thousands separators
(``1,000``, ``10\\,000``) go; ``\\text{}``-like wrappers are unwrapped; currency signs, degree signs
(``^\\circ``, ``°``) and unit words after a number go. Percentages are left to math-verify, whose
rule is its own (``50\\%`` = ``50`` = ``0.5``, but ``12.5\\%`` ≠ ``12.5``). Tier 3 gets the
answer unnormalised, so math-verify's own normalisation applies.

**Deliberate differences from math-verify** (each a test in ``tests/test_verify.py``):

- the last box, not all of them, unless the gold is a collection: a model that boxes an
  intermediate value and then its answer means the last one;
- the text after ``</think>`` first: what is inside the think block is scratch work;
- a thin space between digit groups (``10\\,000``) is a thousands separator, not a product;
- any word after a number is a unit (``5 eggs`` = ``5``), not only those in math-verify's list,
  except the words that change its value: scale words and "and a half" are read (``2 hundred`` =
  ``200``, ``2 dozen`` = ``24``, ``2 and a half`` = ``2.5``, ``2.5 million`` = ``2500000``), and
  powers, constants, operators, comparisons and hedges (``3 squared``, ``4 pi``, ``5 or more``,
  ``5 below zero``) make the answer wrong unless it is the gold verbatim (math-verify would drop the
  words and read the number alone); the sign ``°`` is a degree sign like ``^\\circ``;
- the value right after "the answer is" is the answer, not a later ``= 3`` in the same sentence;
- a comma is never a decimal point: ``3,5`` is two answers, as math-verify itself reads it in
  ``\\boxed{3,5}`` (but not in prose, where it reads 3.5).

math-verify's own timeout uses ``signal.alarm``, which works only in the main thread of the main
interpreter; the env runs in threads and in vector-env worker processes (daemonic, so they cannot
use ``multiprocessing`` children). A plain ``subprocess`` worker spoken to over pipes works in all
of these places, and a killed process, unlike a thread, really stops.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

VerifierKind = Literal["math", "exact", "reasoning_gym"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACES = re.compile(r"[{}]")
_FINAL_ANSWER = re.compile(r"\bfinal answer\b[^\n]{0,100}?\s(?:is|are)\b\s*:?", re.IGNORECASE)
_ANSWER = re.compile(r"\banswer\b\s*(?:is\b|[:=])\s*:?", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(?P<answer>[^*\n]+?)\*\*")
_HASHES = re.compile(r"^####\s*(?P<answer>.+?)\s*$", re.MULTILINE)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$((?:\\\$|[^$])+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SPAN_JOINER = re.compile(r"\s*(?:,?\s*(?:and|or)\b|,)\s*")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_CLAUSE_BREAK = re.compile(r",\s|;|\s(?:because|since|as|which|so|when|where|if|given)\b")

_NUMBER = re.compile(
    r"^(?P<sign>[-+]?)\s*(?:"
    r"\\frac\{(?P<fnum>\d+)\}\{(?P<fden>\d+)\}"
    r"|(?P<num>\d+)/(?P<den>\d+)(?![\d.])"
    r"|(?P<dec>\d*\.\d+|\d+)"
    r")"
)
# What may follow a number and still leave it a plain number: nothing, or a space and words
# (units, "apples", "in total").
_UNIT_TAIL = re.compile(r"^(?:\s+[^\W\d_][^\d=+*/^<>()\[\]{}%]*)?$")
# Words that change the value of the number before them, so they are never a unit. Scale words and
# "and a half" right after the number are read (2 hundred = 200, 2 and a half = 2.5); the rest
# (powers, constants, operators, comparisons, hedges) make an answer wrong unless it is the gold verbatim.
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
_SCALE = re.compile(r"^\s+(hundred|thousand|million|billion|trillion|dozen)\b", re.IGNORECASE)
_AND_A_HALF = re.compile(r"^\s+and\s+a\s+half\b", re.IGNORECASE)
_VALUE_WORDS = re.compile(
    r"\b(?:hundreds?|thousands?|millions?|billions?|trillions?|dozens?|half|halves|quarters?|thirds?|squared|cubed|"
    r"pi|times|plus|minus|over|divided|more|less|fewer|above|below|under|least|most|zero)\b|π", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:[, ]\d{3})+)(?![\d])")
_LATEX_UNWRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;: ]|~")
_LATEX_SIZING = re.compile(r"\\(?:left|right|displaystyle)\b")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")


def extract_answer(text: str, pattern: str | None = None, *, all_boxes: bool = False) -> str | None:
    """The final answer stated in ``text`` (see the module docstring for the order), or ``None``.

    ``all_boxes``: join every ``\\boxed{}`` with commas instead of taking the last one.
    """
    if pattern is not None:
        compiled = _compile(pattern)
        if compiled.groups:
            matches = list(compiled.finditer(text))
            if matches:
                last = matches[-1]
                value = last.group("answer") if "answer" in compiled.groupindex else last.group(1)
                if value and value.strip():
                    return value.strip()
    text = final_part(text)
    boxes = [box.strip() for box in boxed_contents(text)]
    if boxes:
        return ", ".join(boxes) if all_boxes else boxes[-1]
    for anchor in (_FINAL_ANSWER, _ANSWER):
        for match in reversed(list(anchor.finditer(text))):
            value = _value_after(text[match.end():], keep_commas=all_boxes)
            if value:
                return value
    for regex in (_BOLD, _HASHES):
        matches = list(regex.finditer(text))
        if matches:
            value = _strip_math(matches[-1].group("answer")).rstrip(".").strip()
            if value:
                return value
    return None


def final_part(text: str) -> str:
    """The text after the last ``</think>``, when there is any; else all of ``text``."""
    _, closed, after = text.rpartition("</think>")
    return after if closed and after.strip() else text


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced, in order.

    One pass over the braces with a stack, so linear in the text: scanning from each box to its
    closing brace was quadratic in the open boxes (20k unclosed ``\\boxed{`` ran for minutes)."""
    box_starts = {match.end() for match in _BOXED.finditer(text)}  # just after a box's "{"
    stack: list[int | None] = []  # per open brace: where its box's content starts, or None
    spans = []
    for brace in _BRACES.finditer(text):
        if brace.group() == "{":
            stack.append(brace.end() if brace.end() in box_starts else None)
        elif stack:
            start = stack.pop()
            if start is not None:
                spans.append((start, brace.start()))
    return [text[start:end] for start, end in sorted(spans)]


def _value_after(text: str, keep_commas: bool) -> str:
    """The answer stated right after an anchor: its opening math spans, else words to the clause end."""
    text = text.replace("**", "").lstrip(" \t\n:")
    spans, pos = [], 0
    while (span := _MATH_SPAN.match(text, pos)) is not None:
        spans.append(_span_content(span).strip())
        joiner = _SPAN_JOINER.match(text, span.end())
        pos = joiner.end() if joiner else span.end()
    if spans:
        return ", ".join(spans)
    end = _SENTENCE_END.search(text)
    sentence = text[: end.start()] if end else text
    span = _MATH_SPAN.search(sentence)
    if span is not None:  # "Answer: the total is $42$"
        return _value_after(sentence[span.start():], keep_commas)
    brk = None if keep_commas else _CLAUSE_BREAK.search(sentence)
    return sentence[: brk.start()].strip() if brk else sentence.strip()


def _strip_math(answer: str) -> str:
    span = _MATH_SPAN.fullmatch(answer.strip())
    return _span_content(span) if span else answer


def _span_content(span: re.Match[str]) -> str:
    return next(group for group in span.groups() if group is not None)


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer, meaning kept (module docstring, "Normalisation")."""
    s = answer.strip()
    s = s.replace("\\$", "").replace("$", "").replace("**", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _LATEX_SIZING.sub("", _LATEX_SPACES.sub(" ", s))
    s = _LATEX_UNWRAP.sub(r" \1", s)
    s = _DEGREES.sub("", s)
    s = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"[, ]", "", m.group(2)), s)
    s = s.replace("\\%", "%")
    return " ".join(s.split()).rstrip(".").strip()


def _plain_number(answer: str) -> tuple[Fraction, bool] | None:
    """(exact value, written as a decimal) of a plain number (``-1,000.5``, ``3/4``, ``\\frac{1}{2}``,
    ``12 apples``); ``None`` for anything else, percentages included."""
    s = normalize_answer(answer)
    match = _NUMBER.match(s)
    if match is None:
        return None
    tail, half, scale = s[match.end():], Fraction(0), 1
    if (words := _AND_A_HALF.match(tail)) is not None:
        half, tail = Fraction(1, 2), tail[words.end():]
    if (words := _SCALE.match(tail)) is not None:
        scale, tail = _SCALES[words.group(1).lower()], tail[words.end():]
    if _VALUE_WORDS.search(tail) or not _UNIT_TAIL.match(tail):
        return None
    try:  # more than 4300 digits (Python's int-string limit): not a plain number; math-verify decides
        if match.group("fnum") is not None:
            num, den = int(match.group("fnum")), int(match.group("fden"))
        elif match.group("num") is not None:
            num, den = int(match.group("num")), int(match.group("den"))
        else:
            value = Fraction(match.group("dec"))
            num, den = value.numerator, value.denominator
    except ValueError:
        return None
    if den == 0:
        return None
    value = (Fraction(num, den) + half) * scale
    is_decimal = "." in (match.group("dec") or "")
    return (-value if match.group("sign") == "-" else value), is_decimal


def changes_value(answer: str) -> bool:
    """``answer`` is a number followed by words that change its value and that :func:`_plain_number`
    does not read (``3 squared``, ``5 or more``, ``4 pi``): math-verify would drop them, so it is
    not asked."""
    s = normalize_answer(answer)
    match = _NUMBER.match(s)
    return match is not None and _VALUE_WORDS.search(s[match.end():]) is not None


def compare_numbers(pred: str, gold: str) -> bool | None:
    """math-verify's verdict on two plain numbers, or ``None`` when either is not one or it is too close to call.

    Exact for integers and fractions, and whenever one side is an integer written without a
    decimal point. Otherwise math-verify rounds both to 6 decimals: values more than 1e-6 apart
    never round alike, and closer ones that differ are left to its own rounding and tie rule.
    """
    parsed_pred, parsed_gold = _plain_number(pred), _plain_number(gold)
    if parsed_pred is None or parsed_gold is None:
        return None
    (p, p_decimal), (g, g_decimal) = parsed_pred, parsed_gold
    if p == g:
        return True
    exact = not (p_decimal or g_decimal) or any(
        not decimal and value.denominator == 1 for value, decimal in (parsed_pred, parsed_gold)
    )
    if exact or abs(p - g) > Fraction(1, 10**6):
        return False
    return None


def is_collection(gold: str) -> bool:
    """Whether ``gold`` lists several values (a set, tuple, interval or list): it has a comma."""
    return "," in normalize_answer(gold)


def verify_answer(response: str, gold: str, *, timeout_s: float = 5.0, pattern: str | None = None) -> bool:
    """True when the final answer of ``response`` (or ``response`` itself, if it states none) equals ``gold``.

    Plain numbers and identical strings are decided in this thread; anything else goes to
    math-verify in the worker process, cut off after ``timeout_s`` seconds (a timeout is incorrect).
    """
    extracted = extract_answer(response, pattern, all_boxes=is_collection(gold))
    pred = extracted if extracted is not None else final_part(response)
    decided = compare_numbers(pred, gold)
    if decided is not None:
        return decided
    if normalize_answer(pred) == normalize_answer(gold):
        return True
    if changes_value(pred) or changes_value(gold):
        return False
    return bool(_worker().verify(pred, gold, timeout_s, as_latex=extracted is not None))


def exact_match(pred: str, gold: str) -> bool:
    """Equal after :func:`normalize_answer`, ignoring case."""
    return normalize_answer(pred).casefold() == normalize_answer(gold).casefold()


def outcome_reward(
    response: str,
    gold: str,
    *,
    verifier: VerifierKind = "math",
    pattern: str | None = None,
    timeout_s: float = 5.0,
    answer_scorer: Callable[[str | None], float] | None = None,
) -> float:
    """The outcome reward R of REPRO_SPEC §5: 1.0 when the final answer is correct, else 0.0.

    ``verifier``: ``math`` (:func:`verify_answer`), ``exact`` (:func:`exact_match` of the extracted
    answer) or ``reasoning_gym`` (``answer_scorer``, the dataset's own ``score_answer``, which may
    return partial credit in [0, 1]).
    """
    if verifier == "reasoning_gym":
        if answer_scorer is None:
            raise ValueError("verifier 'reasoning_gym' needs the dataset's answer_scorer")
        return float(answer_scorer(extract_answer(response, pattern)))
    if verifier == "exact":
        extracted = extract_answer(response, pattern)
        return float(extracted is not None and exact_match(extracted, gold))
    return float(verify_answer(response, gold, timeout_s=timeout_s, pattern=pattern))


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class _MathVerifyWorker:
    """One child process running math-verify; killed and restarted when a call times out."""

    STARTUP_TIMEOUT_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._pid = os.getpid()

    def verify(self, pred: str, gold: str, timeout_s: float, *, as_latex: bool = True) -> bool | None:
        """math-verify's verdict, or ``None`` on timeout or when math-verify raised.

        ``as_latex``: ``pred`` is an extracted answer; else a whole response for math-verify to read.
        """
        with self._lock:
            self._ensure_started()
            assert self._proc is not None and self._proc.stdin is not None  # set by _ensure_started
            try:
                self._proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "as_latex": as_latex}) + "\n")
                self._proc.stdin.flush()
                reply = json.loads(self._lines.get(timeout=timeout_s))
            except queue.Empty:
                logger.warning("math-verify timed out after %.1f s on %r vs %r", timeout_s, pred[:80], gold)
                self.stop()
                return None
            except (OSError, ValueError) as e:  # the worker died or wrote garbage
                logger.warning("math-verify worker failed (%s); restarting it", e)
                self.stop()
                return None
            return reply.get("ok")

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's pipes are not ours
            self._proc, self._lines, self._pid = None, queue.Queue(), os.getpid()
        if self._proc is not None and self._proc.poll() is None:
            return
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._lines = queue.Queue()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from repro_env.verify import serve_math_verify; serve_math_verify()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, env=env,
        )
        threading.Thread(target=_pump, args=(self._proc.stdout, self._lines), daemon=True).start()
        try:
            ready = self._lines.get(timeout=self.STARTUP_TIMEOUT_S)  # the "ready" line
            # warm-up checks passed before it said ready (len(_WARM_UP) when all did)
            self.warmed = int(json.loads(ready).get("warmed", 0))
        except queue.Empty:
            self.stop()
            raise RuntimeError("the math-verify worker did not start") from None

    def stop(self) -> None:
        if self._proc is not None and self._pid == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def _pump(stream, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


_WORKER: _MathVerifyWorker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> _MathVerifyWorker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _MathVerifyWorker()
            atexit.register(_WORKER.stop)
        return _WORKER


# (gold, response) pairs touching the LaTeX grammar, radicals, fractions, polynomials and constants
_WARM_UP = (("2\\sqrt{2}", "so it is \\boxed{\\sqrt{8}}"), ("0.5", "\\boxed{\\frac{3}{6}}"),
            ("1+x^2", "\\boxed{x^2+1}"), ("\\frac{\\pi}{2}", "\\boxed{\\pi/2}"))


def serve_math_verify() -> None:
    """Worker loop: read ``{"pred", "gold", "as_latex"}`` JSON lines on stdin, write ``{"ok": bool | null}``.

    The gold, and the prediction when ``as_latex``, are read as LaTeX (inside ``\\boxed{}``); a
    whole response is read by math-verify's own extraction, then as LaTeX if it finds nothing.
    math-verify's signal timeouts are off here: the parent enforces the time limit by killing us.
    """
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    def as_latex(answer: str) -> list:
        return parse("\\boxed{" + answer + "}", parsing_timeout=None)

    # Warm up before "ready": the first parse and verify load the LaTeX grammar and sympy's
    # simplifiers (10x a warm call), which would otherwise come out of the first answer's timeout_s
    # and turn a correct symbolic answer into a wrong one. The parent's startup timeout covers this.
    warmed = 0
    for gold, pred in _WARM_UP:
        try:
            warmed += bool(verify(as_latex(gold), parse(pred, parsing_timeout=None), timeout_seconds=None))
        except Exception:  # a warm-up that fails only leaves the worker cold, never dead
            pass
    print(json.dumps({"ready": True, "warmed": warmed}), flush=True)

    for line in sys.stdin:
        request = json.loads(line)
        try:
            gold = as_latex(request["gold"])
            pred = as_latex(request["pred"]) if request["as_latex"] else (
                parse(request["pred"], parsing_timeout=None) or as_latex(request["pred"]))
            ok: bool | None = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:  # a parser crash on odd input is a wrong answer, not an env crash
            ok = None
        print(json.dumps({"ok": ok}), flush=True)
