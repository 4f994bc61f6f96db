"""Every ``tasks/*.yaml`` becomes a gym id; ``register_task(path)`` adds one more.

Registration reads and validates the YAML only: no model is loaded until ``gym.make``.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from repro_env.tasks import builtin_task_files, load_task

ENTRY_POINT = "repro_env.env:make_env"
VECTOR_ENTRY_POINT = "repro_env.vector:make_vector_env"


def register_task(path: str | Path) -> str:
    """Register the task YAML at ``path`` under its ``id`` and return the id.

    ``gym.make(id)`` and ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``
    then build it; keyword arguments of either override the YAML (validated, unknown keys raise).
    """
    path = Path(path).resolve()
    task = load_task(path)
    gym.register(id=task.id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                 kwargs={"task": str(path)})
    return task.id


def register_builtin_tasks() -> list[str]:
    """Register the tasks shipped in the package (``tasks/*.yaml``)."""
    return [register_task(path) for path in builtin_task_files()]


def registered_ids() -> list[str]:
    """The gym ids that point at repro-env tasks."""
    return sorted(i for i, spec in gym.registry.items() if spec.entry_point == ENTRY_POINT)
