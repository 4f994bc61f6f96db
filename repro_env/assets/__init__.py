"""Package data: the bundled tiny math language model (``tiny-math/``), and where a model name points."""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from repro_env.errors import ConfigError, ScorerError

TINY_MATH_DIR = Path(__file__).resolve().parent / "tiny-math"
BUNDLED_MODEL = "bundled"
"""The model name that means the bundled tiny math model, wherever a model is configured."""
HUB_PROBE_S = 3.0
"""How long to wait for the model hub to answer before calling the machine offline."""


def bundled_model_dir() -> Path:
    """Directory of the bundled model (config, safetensors weights, tokenizer, model card)."""
    if not (TINY_MATH_DIR / "model.safetensors").is_file():
        raise ScorerError(
            f"the bundled model is missing from {TINY_MATH_DIR}: reinstall repro-env, "
            "or rebuild it with `repro-env pretrain-tiny --out repro_env/assets/tiny-math`"
        )
    return TINY_MATH_DIR


def resolve_model(name: str | Path) -> str:
    """What to load ``name`` from: ``bundled`` → the bundled model's directory; an existing
    directory or a loadable hub id as is.

    Local paths are checked first, and a name that cannot load fails at once with a
    ``ConfigError``, never after minutes of hub retries: a path with no directory there, or a hub
    id that is not in the local Hugging Face cache while the hub cannot be reached.
    """
    text = str(name)
    if text == BUNDLED_MODEL:
        return str(bundled_model_dir())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    expected = "a model directory (with config.json), a hub id or 'bundled'"
    if path.exists():
        raise ConfigError(f"field 'model' must be {expected}, got {text!r}, which is a file")
    local = f"there is no directory {text!r} (cwd: {Path.cwd()})"
    if not _could_be_hub_id(text):
        raise ConfigError(f"field 'model' must be {expected}, got {text!r}: {local}")
    offline = None if _in_hub_cache(text) else _hub_offline()
    if offline:
        raise ConfigError(
            f"field 'model' must be {expected}, got {text!r}: {local}, and as a hub id it is not in the "
            f"local Hugging Face cache while {offline}. Give the path of a local model directory or "
            f"'bundled'; to use a hub model, download it where there is a network (`hf download {text} "
            "--local-dir DIR`) and give DIR")
    return text


def _could_be_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


@functools.lru_cache(maxsize=1)
def _hub_offline() -> str | None:
    """Why the hub cannot be reached (``None`` when it answers, or a proxy will be tried)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    failure: list[str] = []

    def probe() -> None:  # in a thread: a stuck name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
        except OSError as e:
            failure.append(f"the hub ({host}:{port}) cannot be reached: {e}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_S)
    if thread.is_alive():
        return f"the hub ({host}:{port}) did not answer within {HUB_PROBE_S:g} s"
    return failure[0] if failure else None
