"""Kept for callers of ``vllm_compatible_model``: the fixture model now runs on vLLM as it is.

``tiny_llama_dir`` is built with ``head_dim = 32`` (vLLM's CPU attention runs head sizes 32, 64,
80 … only), so vLLM tests can load it directly; new tests should use the fixture.
"""

from __future__ import annotations

from pathlib import Path


def vllm_compatible_model(src: Path, out: Path | None = None) -> Path:
    """``src`` itself; ``out`` is ignored (no head_dim-32 copy is needed any more)."""
    return src
