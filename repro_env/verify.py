"""Final answers: extract them from a response and check them against the ground truth.

The outcome reward of REPRO_SPEC §5 is ``R = 1`` when the final answer verifies against ``a``.
Checking runs in three tiers, cheapest first:

1. string and numeric comparison in the calling thread (``1,000`` = ``1000``,
   ``\\frac{1}{2}`` = ``0.5``, units and trailing text dropped): decides every plain number;
2. math-verify (``parse`` + ``verify``) for symbolic answers, in a separate worker process;
3. a hung math-verify call (sympy can spin for ever on ``9^{9^{9^{9}}}``) is cut off after
   ``timeout_s``: the worker is killed and restarted, and the answer counts as incorrect.

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
_ANSWER_IS = re.compile(r"\b(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<answer>[^\n]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_BOLD = re.compile(r"\*\*(?P<answer>[^*\n]+?)\*\*")
_HASHES = re.compile(r"^####\s*(?P<answer>.+?)\s*$", re.MULTILINE)

_NUMBER = re.compile(
    r"^(?P<sign>[-+]?)\s*(?:"
    r"\\frac\{(?P<fnum>\d+)\}\{(?P<fden>\d+)\}"
    r"|(?P<num>\d+)/(?P<den>\d+)(?![\d.])"
    r"|(?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r")"
)
# What may follow a number and still leave it a plain number: nothing, a percent sign, or a space
# and words (units, "apples", "in total").
_UNIT_TAIL = re.compile(r"^(?:%|\s+[^\W\d_][^\d=+*/^<>()\[\]{}]*)?$")
_LATEX_UNWRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|~|\\left|\\right|\\displaystyle")


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    """The final answer stated in ``text``, or ``None`` when it states none.

    Tried in order: the task's ``pattern`` when it has a capture group (group ``answer`` or group 1
    of its last match), the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), the last
    "the answer is X" (up to the end of the sentence), the last bold ``**X**``, and ``#### X``.
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
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for regex in (_ANSWER_IS, _BOLD, _HASHES):
        matches = list(regex.finditer(text))
        if matches:
            value = matches[-1].group("answer")
            if regex is _ANSWER_IS:
                end = _SENTENCE_END.search(value)
                value = value[: end.start()] if end else value
            value = _BOLD.sub(r"\g<answer>", value).strip().rstrip(".").strip()
            if value:
                return value
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox``), braces balanced; else ``None``."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for pos in range(match.end(), len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end():pos]
    return None


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer: no ``$``, bold, LaTeX spacing, ``\\text{}`` wrappers, ``x =``."""
    s = answer.strip()
    s = s.replace("\\$", "").replace("$", "").replace("**", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _LATEX_SPACES.sub(" ", s)
    s = _LATEX_UNWRAP.sub(r" \1", s)
    s = s.replace("\\%", "%").replace("^\\circ", "").replace("^{\\circ}", "")
    if s.count("=") == 1 and re.fullmatch(r"\s*[A-Za-z]\w*\s*=.*", s, flags=re.DOTALL):
        s = s.split("=", 1)[1]  # "x = 5": the value, not the equation
    s = " ".join(s.split()).rstrip(".").strip()
    return s


def to_number(answer: str) -> Fraction | None:
    """The exact value of a plain number (``-1,000.5``, ``3/4``, ``\\frac{1}{2}``, ``12 apples``)."""
    s = normalize_answer(answer)
    match = _NUMBER.match(s)
    if match is None or not _UNIT_TAIL.match(s[match.end():]):
        return None
    if match.group("fnum") is not None:
        num, den = int(match.group("fnum")), int(match.group("fden"))
    elif match.group("num") is not None:
        num, den = int(match.group("num")), int(match.group("den"))
    else:
        value = Fraction(match.group("dec").replace(",", ""))
        num, den = value.numerator, value.denominator
    if den == 0:
        return None
    value = Fraction(num, den)
    return -value if match.group("sign") == "-" else value


def verify_answer(response: str, gold: str, *, timeout_s: float = 5.0, pattern: str | None = None) -> bool:
    """True when the final answer of ``response`` (or ``response`` itself, if it states none) equals ``gold``.

    Plain numbers and identical strings are decided in this thread; anything else goes to
    math-verify in the worker process, cut off after ``timeout_s`` seconds (a timeout is incorrect).
    """
    extracted = extract_answer(response, pattern)
    pred = extracted if extracted is not None else response
    if exact_match(pred, gold):
        return True
    pred_value, gold_value = to_number(pred), to_number(gold)
    if pred_value is not None and gold_value is not None:
        return pred_value == gold_value
    result = _worker().verify(normalize_answer(pred), normalize_answer(gold), timeout_s)
    return bool(result)


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

    def verify(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or ``None`` on timeout or when math-verify raised."""
        with self._lock:
            self._ensure_started()
            assert self._proc is not None and self._proc.stdin is not None  # set by _ensure_started
            try:
                self._proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")
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
            self._lines.get(timeout=self.STARTUP_TIMEOUT_S)  # the "ready" line
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


def serve_math_verify() -> None:
    """Worker loop: read ``{"pred", "gold"}`` JSON lines on stdin, write ``{"ok": bool | null}``.

    math-verify's signal timeouts are off here: the parent enforces the time limit by killing us.
    """
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            gold = parse("\\boxed{" + request["gold"] + "}", parsing_timeout=None)
            pred = parse("\\boxed{" + request["pred"] + "}", parsing_timeout=None)
            ok: bool | None = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:  # a parser crash on odd input is a wrong answer, not an env crash
            ok = None
        print(json.dumps({"ok": ok}), flush=True)
