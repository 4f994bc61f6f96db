"""A toy problem source kind, as a plugin writes one: an options dataclass and one decorated builder."""

from __future__ import annotations

import random
from dataclasses import dataclass

from repro_env.config import check
from repro_env.errors import TaskSpecError
from repro_env.problems import Problem, ProblemSource, generator_source
from repro_env.sources import register_source
from repro_env.tasks import TaskSpec


@dataclass(frozen=True)
class ToyOptions:
    """``kind: toy``: "What is a + b?" with a and b drawn from the split's seed."""

    max_value: int = 1000
    """Largest operand."""

    def __post_init__(self) -> None:
        check(self.max_value >= 1, "max_value", self.max_value, "an int >= 1", TaskSpecError)


@register_source("toy", options=ToyOptions)
def toy_problems(options: ToyOptions, spec: TaskSpec) -> ProblemSource:
    seeds = {"train": spec.splits.train_seed, "test": spec.splits.test_seed}

    def generate(split: str, index: int) -> Problem:
        rng = random.Random(f"toy-{seeds[split]}-{index}")
        a, b = rng.randint(1, options.max_value), rng.randint(1, options.max_value)
        return Problem(id=f"toy-{split}-{index}", question=f"What is {a} + {b}?", answer=str(a + b),
                       solution=(f"{a} + {b} = {a + b}.{spec.delimiter}",
                                 f"The answer is \\boxed{{{a + b}}}.{spec.delimiter}"))

    return generator_source("toy", generate, *spec.splits.sizes())
