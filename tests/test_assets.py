"""Where a model name points (``resolve_model``): local paths first, and a fast, clear failure offline."""

from __future__ import annotations

import socket
import time

import pytest

from repro_env.assets import _hub_offline, resolve_model
from repro_env.errors import ConfigError
from repro_env.scoring import ScorerConfig, make_scorer


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset and no route to the hub, as on a machine without a network."""
    import huggingface_hub.constants

    def unreachable(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    _hub_offline.cache_clear()
    yield
    _hub_offline.cache_clear()


def test_a_mistyped_local_path_fails_fast_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"field 'model' must be a model directory \(with config.json\), a hub id"
                                          r", 'bundled' or 'bundled-overthinker', got 'runs/my-model': "
                                          r"there is no directory 'runs/my-model' "
                                          rf"\(cwd: {tmp_path}\), and as a hub id it is not in the local Hugging Face "
                                          r"cache while HF_HUB_OFFLINE is set"):
        make_scorer(ScorerConfig(model="runs/my-model"))
    with pytest.raises(ConfigError, match=r"got './runs/x': there is no directory './runs/x'"):
        resolve_model("./runs/x")
    assert time.perf_counter() - start < 10


def test_a_hub_id_without_a_network_says_how_to_use_a_local_directory(no_network):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"got 'org/some-model': .* while the hub \(huggingface.co:443\) cannot be "
                                          r"reached: \[Errno 101\] Network is unreachable. Give the path of a local "
                                          r"model directory or 'bundled'; .*`hf download org/some-model "
                                          r"--local-dir DIR`"):
        make_scorer(ScorerConfig(model="org/some-model"))
    assert time.perf_counter() - start < 10


def test_directories_and_files(tmp_path):
    assert resolve_model(tmp_path) == str(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"which is a file"):
        resolve_model(tmp_path / "weights.bin")
