"""A third-party scorer backend for the registry tests: the hf scorer with J shifted by a constant.

It adds one option of its own (``shift``), so that options of a plugin backend are seen to be
loaded from YAML and checked like the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from repro_env.scoring.hf import HFScorer
from repro_env.scoring.options import HFOptions


@dataclass(frozen=True)
class ShiftedOptions(HFOptions):
    shift: float = 0.0
    """Added to every J (a log-prob, so a negative shift makes the answer look less likely)."""


class ShiftedScorer(HFScorer):
    options_class = ShiftedOptions

    def score(self, requests):
        return [replace(result, J=result.J + self.config.options.shift) for result in super().score(requests)]
