"""repro-env: the RePro process reward (arXiv 2512.01925) as Gymnasium environments.

``import repro_env`` registers every built-in task (``RePro-Math-v0`` ...) with Gymnasium; it
reads the task YAML files and loads no model.
"""

from repro_env.registration import register_builtin_tasks, register_task, registered_ids

__version__ = "0.1.0"
__all__ = ["register_task", "registered_ids", "__version__"]

register_builtin_tasks()
