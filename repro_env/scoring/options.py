"""The built-in backends' own settings (``scorer.options``), importable without torch or vLLM.

Task files are checked when ``repro_env`` is imported, before any model loads, so a backend's
options dataclass lives apart from its scorer (see ``register_scorer(..., options=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repro_env.config import check


@dataclass(frozen=True)
class HFOptions:
    """``scorer.options`` of the hf backend."""

    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """transformers attention kernel."""
    chunk_tokens: int = 1024
    """Longest piece of a long trace fed in one forward by batch scoring (chunked prefill, ``prefill.py``)."""

    def __post_init__(self) -> None:
        check(self.chunk_tokens >= 1, "chunk_tokens", self.chunk_tokens, "an int >= 1")


@dataclass(frozen=True)
class VLLMOptions:
    """``scorer.options`` of the vllm backend."""

    gpu_memory_utilization: float = 0.5
    """Share of GPU memory for the engine (ignored on CPU)."""

    def __post_init__(self) -> None:
        check(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
              self.gpu_memory_utilization, "a number in (0, 1]")
