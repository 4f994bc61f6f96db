"""Package data: the bundled tiny math language models, and where a model name points.

- ``bundled`` (``tiny-math/``): the default scorer and policy; overthinking is a minority behaviour.
- ``bundled-overthinker`` (``tiny-math-overthinker/``): the same architecture and pretraining code
  with a mix in which re-checking every step is the majority, so that it overthinks by default and
  still answers right (the setting in which RePro's claim can be tested).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from repro_env.errors import ConfigError, ScorerError

ASSETS_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL = "bundled"
"""The model name that means the bundled tiny math model, wherever a model is configured."""
BUNDLED_MODELS = {BUNDLED_MODEL: ("tiny-math", "bundled"),
                  "bundled-overthinker": ("tiny-math-overthinker", "overthinker")}
"""Model names that mean a bundled model → (its directory under ``assets/``, its pretraining preset)."""
HUB_PROBE_S = 3.0
"""How long to wait for the model hub to answer before calling the machine offline."""


def bundled_model_dir(name: str = BUNDLED_MODEL) -> Path:
    """Directory of a bundled model (config, safetensors weights, tokenizer, model card)."""
    subdir, preset = BUNDLED_MODELS[name]
    path = ASSETS_DIR / subdir
    if not (path / "model.safetensors").is_file():
        raise ScorerError(
            f"the bundled model {name!r} is missing from {path}: reinstall repro-env, "
            f"or rebuild it with `repro-env pretrain-tiny --preset {preset}`"
        )
    return path


def resolve_model(name: str | Path) -> str:
    """What to load ``name`` from: ``bundled`` or ``bundled-overthinker`` → that bundled model's
    directory; an existing directory or a loadable hub id as is.

    Local paths are checked first, and a name that cannot load fails at once with a
    ``ConfigError``, never after minutes of hub retries: a path with no directory there, or a hub
    id that is not in the local Hugging Face cache while the hub cannot be reached.
    """
    text = str(name)
    if text in BUNDLED_MODELS:
        return str(bundled_model_dir(text))
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    expected = "a model directory (with config.json), a hub id, 'bundled' or 'bundled-overthinker'"
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
