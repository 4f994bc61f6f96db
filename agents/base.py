"""What a learner is, and the rollout helper that GRPO and PPO share (public env API only).

A learner owns a policy and turns rollouts into parameter updates::

    learner = GRPO(GRPOConfig(...))
    for update in range(n):
        batch = learner.collect(envs)          # rollouts through env.reset / env.step
        metrics = learner.update(batch)        # dict of floats, logged by the trainer
    learner.save(dir) / learner.load(dir)      # safetensors + JSON, atomic

``repro-env train`` (agents/train.py) drives any object with this interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Learner(Protocol):
    """The small protocol a custom agent implements to be trained by ``repro-env train``."""

    def collect(self, envs: Any) -> Any:
        """Run rollouts in ``envs`` (a ReasoningVectorEnv) and return a batch for ``update``."""
        ...

    def update(self, batch: Any) -> dict[str, float]:
        """One optimisation phase on ``batch``; returns metrics (losses, KL, entropy, ...)."""
        ...

    def evaluate(self, envs: Any, *, greedy: bool = True) -> dict[str, float]:
        """Held-out metrics: accuracy, tokens per response, backtracks per response."""
        ...

    def save(self, directory: Path) -> None:
        """Write the full training state (weights, optimiser, RNG, step) to ``directory``."""
        ...

    def load(self, directory: Path) -> None:
        """Restore the state written by ``save``; raise ``CheckpointError`` if missing/corrupt."""
        ...
