"""Package data: the bundled tiny math language model (``tiny-math/``)."""

from __future__ import annotations

from pathlib import Path

from repro_env.errors import ScorerError

TINY_MATH_DIR = Path(__file__).resolve().parent / "tiny-math"
BUNDLED_MODEL = "bundled"
"""The model name that means the bundled tiny math model, wherever a model is configured."""


def bundled_model_dir() -> Path:
    """Directory of the bundled model (config, safetensors weights, tokenizer, model card)."""
    if not (TINY_MATH_DIR / "model.safetensors").is_file():
        raise ScorerError(
            f"the bundled model is missing from {TINY_MATH_DIR}: reinstall repro-env, "
            "or rebuild it with `repro-env pretrain-tiny --out repro_env/assets/tiny-math`"
        )
    return TINY_MATH_DIR


def resolve_model(name: str | Path) -> str:
    """``bundled`` → the bundled model's directory; any other name (a directory, a hub id) as is."""
    return str(bundled_model_dir()) if str(name) == BUNDLED_MODEL else str(name)
