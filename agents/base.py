"""What a learner is (the rollout helper that GRPO and PPO share is agents/episodes.py).

A learner owns a policy and its training envs and turns rollouts into parameter updates::

    learner = GRPO(GRPOConfig(...), task="RePro-Math-v0", seed=0)
    for _ in range(n):
        batch = learner.collect()            # rollouts through env.reset / env.step only
        metrics = learner.update(batch)      # dict of floats, logged by the trainer
    learner.evaluate(num_problems=100)       # held-out split
    learner.save(dir); learner.load(dir)     # safetensors + JSON; the trainer makes it atomic

``repro-env train`` (agents/train.py) drives any object with this interface. ``repro-env compare``
also reads the class's ``label`` (its table row, e.g. ``GRPO``) and its config's
``rollouts_per_update`` (episodes per ``collect``: the budget held equal across compared learners).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Learner(Protocol):
    """The small protocol a custom agent implements to be trained by ``repro-env train``."""

    updates: int
    """Updates done so far (restored by ``load``)."""

    def collect(self) -> Any:
        """Run rollouts in the learner's training envs and return a batch for ``update``."""
        ...

    def update(self, batch: Any) -> dict[str, float]:
        """One optimisation phase on ``batch``; returns metrics (losses, KL, entropy, rewards...)."""
        ...

    def evaluate(self, *, num_problems: int, greedy: bool = True, samples: int = 1) -> dict[str, float]:
        """Held-out metrics: ``accuracy``, ``tokens_per_response``, ``backtracks_per_response``,
        ``process_return``; with ``samples`` > 1 at temperature 1.0, accuracy is avg@samples."""
        ...

    def save(self, directory: Path) -> None:
        """Write the full training state (weights, optimiser, RNG, update count) into ``directory``."""
        ...

    def load(self, directory: Path) -> None:
        """Restore the state written by ``save``; raise ``CheckpointError`` if missing or corrupt."""
        ...
