"""Learners that use only the public repro-env API: GRPO, PPO, an SB3 bridge, custom agents.

Their code lives in the repository's top-level ``agents/`` folder. A wheel installs that folder as
this package (``package-dir`` in pyproject.toml), so that no top-level ``agents`` package clashes
with others of that name (the OpenAI Agents SDK installs one). In a source checkout or an editable
install this file points the package at the folder.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[2] / "agents")]
