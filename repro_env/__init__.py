"""repro-env: the RePro process reward (arXiv 2512.01925) as Gymnasium environments.

``import repro_env`` registers every built-in task (``RePro-Math-v0`` ...) with Gymnasium; it
reads the task YAML files and loads no model.
"""

from repro_env.registration import register_builtin_tasks, register_task, registered_ids

__version__ = "0.1.0"
__all__ = ["register_task", "registered_ids", "score_traces", "__version__"]


def __getattr__(name: str):
    # Lazy: ``repro_env.score_traces`` loads the diagnostics module (and a model) only when used.
    if name == "score_traces":
        from repro_env.diagnostics import score_traces

        return score_traces
    raise AttributeError(f"module 'repro_env' has no attribute {name!r}")


register_builtin_tasks()
