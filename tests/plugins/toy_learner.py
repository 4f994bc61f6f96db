"""A third-party learner in one module: what ``repro-env compare`` needs from a learner class.

``ToyGRPO`` is GRPO under another label: a class with ``config_class`` (whose config exposes
``rollouts_per_update``) and ``label``. Tests register it with one line,
``register_learner("toy", "tests.plugins.toy_learner:ToyGRPO")``, or name it by that path.
"""

from __future__ import annotations

from repro_env.agents.grpo import GRPO, GRPOConfig


class ToyGRPO(GRPO):
    """GRPO with its own table label."""

    config_class = GRPOConfig
    label = "Toy"
