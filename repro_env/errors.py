"""Typed errors. Every error the package raises on bad input derives from ``ReproEnvError``.

Messages name the file (when there is one), the field, the value, what was expected and the fix:

    TaskSpecError: tasks/math.yaml: field 'max_steps' must be an int >= 1, got '-3' (str)
"""

from __future__ import annotations


class ReproEnvError(Exception):
    """Base of every error raised by repro-env."""


class ConfigError(ReproEnvError, ValueError):
    """A configuration value (dataclass field, YAML key or keyword override) is invalid."""


class TaskSpecError(ConfigError):
    """A task YAML file (or a task keyword override) is invalid."""


class RewardInputError(ReproEnvError, ValueError):
    """Reward math got input it cannot turn into a finite reward (NaN, -inf, wrong shape)."""


class ScorerError(ReproEnvError, RuntimeError):
    """The scorer failed: model could not load, the engine raised, timed out or returned NaN."""


class ContextLengthError(ScorerError):
    """The input to score is longer than the scorer's context window."""


class ActionError(ReproEnvError, ValueError):
    """An env action is not a valid segment (not a string, empty, too long, outside the charset)."""


class CheckpointError(ReproEnvError):
    """A checkpoint is missing, corrupt or incompatible."""


class TrainingError(ReproEnvError, RuntimeError):
    """A training run cannot continue: a NaN/inf loss or metric, or corrupt run files."""


class TraceInputError(ReproEnvError, ValueError):
    """A line of a traces file cannot be scored (``repro-env score``): it names the line and the field."""

    def __init__(self, message: str, *, line: int = 0, field: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.field = field
