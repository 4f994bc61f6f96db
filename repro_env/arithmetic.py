"""Multi-step arithmetic word problems with step-by-step reference solutions, and overthinking.

The built-in problem generator of repro-env and the training data of the bundled tiny math model.
A problem is a short story about one person and one kind of object; each sentence changes the count
by one arithmetic operation (``+``, ``-``, ``*``, exact ``/``), and the question asks for the final
count::

    Mia has 12 apples. She buys 4 bags with 3 apples each. She gives away 7 apples.
    How many apples does Mia have now?

The reference solution has one segment per operation, each ending with the delimiter (``"\\n\\n"``),
and a final segment with the boxed answer::

    ["She gets 4 * 3 = 12 apples.\\n\\n", "12 + 12 = 24.\\n\\n", "24 - 7 = 17.\\n\\n",
     "The answer is \\boxed{17}.\\n\\n"]

Problem ``i`` is a pure function of ``(config, seed, split, index)``: its random generator is seeded
from a hash of those, never from global state.

:func:`overthink` rewrites a solution into the verbose variants RePro is meant to remove: redundant
re-checks of a finished step, false starts corrected with "Wait, ...", and idle rumination. Every
inserted segment matches the default backtrack patterns of REPRO_SPEC §6.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

from repro_env.config import check
from repro_env.problems import DEFAULT_ANSWER_TEMPLATE, DEFAULT_DELIMITER, Problem

Operation = Literal["+", "-", "*", "/"]
OverthinkKind = Literal["recheck", "false_start", "rumination"]

OVERTHINK_KINDS: tuple[OverthinkKind, ...] = ("recheck", "false_start", "rumination")

NAMES = (("Mia", "She", "her"), ("Liam", "He", "his"), ("Ava", "She", "her"), ("Noah", "He", "his"),
         ("Zoe", "She", "her"), ("Omar", "He", "his"), ("Lena", "She", "her"), ("Ravi", "He", "his"),
         ("Sofia", "She", "her"), ("Ben", "He", "his"), ("Yuki", "She", "her"), ("Tom", "He", "his"))
OBJECTS = ("apples", "marbles", "stickers", "books", "coins", "cookies", "pencils", "cards",
           "shells", "stamps", "beads", "eggs")
CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")

# Sentences of the story, by step kind. Fields: n (operand), m (per container), name/pronoun/obj/box.
_ADD = ("{P} buys {n} more {obj}.", "{P} finds {n} more {obj}.", "A friend gives {p2} {n} {obj}.",
        "{P} gets {n} more {obj} as a gift.")
_SUB = ("{P} gives away {n} {obj}.", "{P} loses {n} {obj}.", "{P} uses {n} of the {obj}.",
        "{P} sells {n} {obj}.")
_MUL = ("Then the number of {obj} becomes {n} times as large.", "{P} collects until {p} {obj} are "
        "{n} times as many as before.")
_DIV = ("{P} splits the {obj} into {n} equal groups and keeps one group.",
        "{P} shares the {obj} equally with friends, {n} people in all, and keeps one share.")
_BAGS = ("{P} buys {n} {box} with {m} {obj} each.", "{P} receives {n} {box} of {m} {obj} each.")

RECHECK_TEMPLATES = ("Let me double-check: {expr}. Yes.", "Let me re-check that step: {expr}. Correct.",
                     "Hmm, let me double-check {expr}. That is right.")
WRONG_TEMPLATES = ("Wait, that's wrong. {expr}.", "Wait, I made a mistake. {expr}.",
                   "Hmm, no, that is not right. Actually {expr}.")
RUMINATION_TEMPLATES = ("Hmm, let me think about this carefully.", "Hmm, let me read the question again.",
                        "Wait, let me make sure I understand the problem.",
                        "Hmm, what do we know so far?")

_STEP = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty of the generated word problems."""

    min_ops: int = 2
    """Fewest arithmetic operations per problem (each is one solution segment)."""
    max_ops: int = 4
    """Most arithmetic operations per problem."""
    min_value: int = 1
    """Smallest starting count, added/removed amount and per-container amount."""
    max_value: int = 20
    """Largest starting count, added/removed amount and per-container amount."""
    max_multiplier: int = 5
    """Largest factor of a ``*`` step, container count, or divisor of a ``/`` step (smallest is 2)."""
    max_result: int = 200
    """Largest absolute value any intermediate result may take."""
    operations: tuple[str, ...] = ("+", "-", "*")
    """Operations drawn from: any of ``+``, ``-``, ``*``, ``/`` (division only where it is exact)."""
    allow_negative: bool = False
    """Let subtraction go below zero; when false every intermediate stays >= 0."""
    bags_share: float = 0.3
    """Chance that a ``+`` step is told as "N bags with M each" (two operations: ``*`` then ``+``);
    needs both ``+`` and ``*`` in ``operations``."""

    def __post_init__(self) -> None:
        check(isinstance(self.min_ops, int) and self.min_ops >= 1, "min_ops", self.min_ops, "an int >= 1")
        check(isinstance(self.max_ops, int) and self.max_ops >= self.min_ops, "max_ops", self.max_ops,
              f"an int >= min_ops ({self.min_ops})")
        check(isinstance(self.min_value, int) and self.min_value >= 1, "min_value", self.min_value,
              "an int >= 1")
        check(isinstance(self.max_value, int) and self.max_value >= self.min_value, "max_value",
              self.max_value, f"an int >= min_value ({self.min_value})")
        check(isinstance(self.max_multiplier, int) and self.max_multiplier >= 2, "max_multiplier",
              self.max_multiplier, "an int >= 2")
        check(isinstance(self.max_result, int) and self.max_result >= 2 * self.max_value, "max_result",
              self.max_result, f"an int >= 2 * max_value ({2 * self.max_value})")
        ops = self.operations
        check(isinstance(ops, tuple) and len(ops) > 0 and all(o in ("+", "-", "*", "/") for o in ops)
              and len(set(ops)) == len(ops), "operations", ops,
              "a non-empty tuple of distinct operations among '+', '-', '*', '/'")
        # Without + or - a story can get stuck (nothing to multiply or divide within range).
        check("+" in ops or "-" in ops, "operations", ops, "a tuple containing '+' or '-'")
        check(0.0 <= self.bags_share <= 1.0, "bags_share", self.bags_share, "a number in [0, 1]")


def problem_rng(seed: int, split: str, index: int) -> random.Random:
    """A generator seeded from a hash of ``(seed, split, index)``: independent of every other problem."""
    digest = hashlib.blake2b(f"arith|{seed}|{split}|{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def generate_problem(config: ArithmeticConfig, seed: int, index: int, split: str = "train") -> Problem:
    """Problem ``index`` of ``split`` for ``seed``: a word problem and its step-by-step solution.

    ``meta`` holds ``ops`` (the operation of each step, in order), ``num_ops``, ``start`` (the
    initial count) and ``results`` (the result of each operation, in order; the last is the answer).
    """
    rng = problem_rng(seed, split, index)
    name, pronoun, possessive = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    n_ops = rng.randint(config.min_ops, config.max_ops)
    while True:  # rejection: a story that runs out of legal steps restarts from a new count
        story = _draw_story(config, rng, n_ops, pronoun, possessive, obj)
        if story is not None:
            break
    start, sentences, steps, ops, results = story
    question = " ".join([f"{name} has {start} {obj}.", *sentences,
                         f"How many {obj} does {name} have now?"])
    answer = str(results[-1])
    final = f"The answer is {DEFAULT_ANSWER_TEMPLATE.format(answer=answer)}."
    solution = tuple(s + DEFAULT_DELIMITER for s in (*steps, final))
    return Problem(
        id=f"arith-{split}-{seed}-{index}", question=question, answer=answer, solution=solution,
        meta={"ops": tuple(ops), "num_ops": len(ops), "start": start, "results": tuple(results),
              "source": "arithmetic"},
    )


def _draw_story(config: ArithmeticConfig, rng: random.Random, n_ops: int, pronoun: str,
                possessive: str, obj: str):
    """Start, sentences, solution steps, ops and op results for ``n_ops`` operations; None if stuck."""
    value = rng.randint(config.min_value, config.max_value)
    start = value
    sentences: list[str] = []
    steps: list[str] = []
    ops: list[str] = []
    results: list[int] = []
    fields = {"P": pronoun, "p": possessive, "p2": "him" if pronoun == "He" else "her", "obj": obj}
    lo, hi, top = config.min_value, config.max_value, config.max_result
    while len(ops) < n_ops:
        remaining = n_ops - len(ops)
        choices = _legal_steps(config, value, remaining)
        if not choices:
            return None
        kind = rng.choice(choices)
        if kind == "+" and remaining >= 2 and "*" in config.operations and rng.random() < config.bags_share:
            kind = "bags"
        if kind == "bags":
            n = rng.randint(2, config.max_multiplier)
            m = rng.randint(lo, max(lo, min(hi, (top - value) // n)))
            if value + n * m > top:
                return None
            box = rng.choice(CONTAINERS)
            sentences.append(rng.choice(_BAGS).format(n=n, m=m, box=box, **fields))
            steps += [f"{pronoun} gets {n} * {m} = {n * m} {obj}.", f"{value} + {n * m} = {value + n * m}."]
            ops += ["*", "+"]
            value += n * m
            results += [n * m, value]
            continue
        if kind == "+":
            n = rng.randint(lo, min(hi, top - value))
            new, template = value + n, _ADD
        elif kind == "-":
            n = rng.randint(lo, min(hi, value + top) if config.allow_negative else min(hi, value))
            new, template = value - n, _SUB
        elif kind == "*":
            n = rng.randint(2, min(config.max_multiplier, top // max(abs(value), 1)))
            new, template = value * n, _MUL
        else:
            n = rng.choice([d for d in range(2, config.max_multiplier + 1) if value % d == 0])
            new, template = value // n, _DIV
        sentences.append(rng.choice(template).format(n=n, **fields))
        steps.append(f"{value} {kind} {n} = {new}.")
        ops.append(kind)
        value = new
        results.append(value)
    return start, sentences, steps, ops, results


def _legal_steps(config: ArithmeticConfig, value: int, remaining: int) -> list[str]:
    """Operations that keep the count within ``[0 or -max_result, max_result]`` from ``value``."""
    legal = []
    lo, top = config.min_value, config.max_result
    for op in config.operations:
        if op == "+" and value + lo <= top:
            legal.append(op)
        elif op == "-" and (config.allow_negative and value - lo >= -top or value - lo >= 0):
            legal.append(op)
        elif op == "*" and value != 0 and abs(value) * 2 <= top:
            legal.append(op)
        elif op == "/" and value != 0 and any(value % d == 0 for d in range(2, config.max_multiplier + 1)):
            legal.append(op)
    return legal


def solution_steps(solution: tuple[str, ...] | list[str]) -> list[tuple[int, int, str, int, int]]:
    """Every ``a op b = c`` in the segments, as ``(segment index, a, op, b, c)``."""
    found = []
    for i, segment in enumerate(solution):
        for a, op, b, c in _STEP.findall(segment):
            found.append((i, int(a), op, int(b), int(c)))
    return found


def evaluate_step(a: int, op: str, b: int) -> int:
    """``a op b`` with exact integer division (the generator only divides exactly)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b


def overthink(solution: tuple[str, ...] | list[str], rng: random.Random, kind: OverthinkKind,
              count: int = 1) -> tuple[str, ...]:
    """The solution with ``count`` overthinking insertions of one ``kind``; the final answer is kept.

    - ``recheck``: after a computing step, a redundant "Let me double-check: 5 * 3 = 15. Yes." segment;
    - ``false_start``: a computing step first written with a wrong result (later steps still use the
      right one), followed by "Wait, that's wrong. 5 * 3 = 15." with the correct result;
    - ``rumination``: an idle "Hmm, let me think about this carefully." segment before some step.

    Inserted segments end with the delimiter and match the default backtrack patterns (REPRO_SPEC §6).
    """
    check(kind in OVERTHINK_KINDS, "kind", kind, f"one of {', '.join(map(repr, OVERTHINK_KINDS))}")
    check(isinstance(count, int) and count >= 1, "count", count, "an int >= 1")
    segments = list(solution)
    computing = [i for i, s in enumerate(segments) if _STEP.search(s)]
    if kind == "rumination":
        # Positions before any segment but never after the final answer.
        spots = sorted(rng.sample(range(len(segments)), min(count, len(segments))), reverse=True)
        for i in spots:
            segments.insert(i, rng.choice(RUMINATION_TEMPLATES) + DEFAULT_DELIMITER)
        return tuple(segments)
    check(len(computing) > 0, "solution", solution, "a solution with at least one 'a op b = c' step")
    for i in sorted(rng.sample(computing, min(count, len(computing))), reverse=True):
        a, op, b, c = _STEP.search(segments[i]).groups()
        expr = f"{a} {op} {b} = {c}"
        if kind == "recheck":
            segments.insert(i + 1, rng.choice(RECHECK_TEMPLATES).format(expr=expr) + DEFAULT_DELIMITER)
        else:
            wrong = _wrong_result(int(c), rng)
            original = segments[i]
            segments[i] = original.replace(f"= {c}", f"= {wrong}", 1)
            segments.insert(i + 1, rng.choice(WRONG_TEMPLATES).format(expr=expr) + DEFAULT_DELIMITER)
    return tuple(segments)


def _wrong_result(correct: int, rng: random.Random) -> int:
    """A plausible slip: off by a small amount or by ten, never the correct value nor negative."""
    while True:
        wrong = correct + rng.choice([-10, -2, -1, 1, 2, 10])
        if (wrong >= 0 or correct < 0) and wrong != correct:
            return wrong
