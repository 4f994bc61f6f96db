"""A learner that needs no model and no torch: console-script tests of ``repro-env train`` start in
well under a second with it (``algorithm: "tests.plugins.idle_learner:IdleLearner"``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IdleConfig:
    """No settings: every update only counts."""


class IdleLearner:
    config_class = IdleConfig

    def __init__(self, config: IdleConfig, task: str, *, seed: int) -> None:
        self.config, self.task, self.seed, self.updates = config, task, seed, 0

    def collect(self) -> None:
        return None

    def update(self, batch: None) -> dict[str, float]:
        self.updates += 1
        return {"loss": 0.0}

    def evaluate(self, *, num_problems: int, greedy: bool = True, samples: int = 1) -> dict[str, float]:
        return {"accuracy": 0.0}

    def save(self, directory: Path) -> None:
        (directory / "state.json").write_text(json.dumps({"updates": self.updates}))

    def load(self, directory: Path) -> None:
        self.updates = json.loads((directory / "state.json").read_text())["updates"]
