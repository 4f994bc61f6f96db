"""Every ``tasks/*.yaml`` becomes a gym id; ``register_task(path)`` adds one more.

Registration reads and validates the YAML only: no model is loaded until ``gym.make``.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from repro_env.config import describe
from repro_env.errors import TaskSpecError
from repro_env.tasks import builtin_task_files, builtin_task_ids, load_task

ENTRY_POINT = "repro_env.env:make_env"
VECTOR_ENTRY_POINT = "repro_env.vector:make_vector_env"


def register_task(path: str | Path, *, override: bool = False) -> str:
    """Register the task YAML at ``path`` under its ``id`` and return the id.

    ``gym.make(id)`` and ``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``
    then build it; keyword arguments of either override the YAML (validated, unknown keys raise).
    The id of a built-in task is refused unless ``override`` (it would silently replace it).
    """
    if not isinstance(path, str | Path) or not str(path):
        raise TaskSpecError(f"register_task needs the path of a task YAML file, got {describe(path)}")
    path = Path(path).resolve()
    task = load_task(path)
    builtin = builtin_task_ids().get(task.id)
    if builtin is not None and builtin.resolve() != path and not override:
        raise TaskSpecError(f"{path}: id {task.id!r} is a built-in task's ({builtin.name}); give the task another "
                            "id, or pass override=True to replace the built-in")
    gym.register(id=task.id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                 kwargs={"task": str(path)})
    return task.id


def register_builtin_tasks() -> list[str]:
    """Register the tasks shipped in the package (``tasks/*.yaml``)."""
    return [register_task(path) for path in builtin_task_files()]


def registered_ids() -> list[str]:
    """The gym ids that point at repro-env tasks."""
    return sorted(i for i, spec in gym.registry.items() if spec.entry_point == ENTRY_POINT)
