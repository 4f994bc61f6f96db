"""Checkpoints: atomic writes (a crash mid-write leaves the previous one), verification messages."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from repro_env.agents.checkpoint import (
    LATEST,
    MANIFEST,
    check_safetensors_header,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_manifest,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    write_atomic,
)
from repro_env.errors import CheckpointError


class VectorLearner:
    """The smallest thing with a Learner's save/load: one weight vector and an update count."""

    def __init__(self, value: float = 0.0, crash_after_bytes: int | None = None):
        self.weight = torch.full((4,), value)  # (4,)
        self.updates = 0
        self.crash_after_bytes = crash_after_bytes

    def save(self, directory: Path) -> None:
        save_file({"weight": self.weight}, directory / "weights.safetensors")
        if self.crash_after_bytes is not None:  # the process "dies" with a torn file on disk
            with (directory / "weights.safetensors").open("r+b") as f:
                f.truncate(self.crash_after_bytes)
            raise OSError("No space left on device")
        (directory / "state.json").write_text(json.dumps({"updates": self.updates}))

    def load(self, directory: Path) -> None:
        self.weight = load_file(directory / "weights.safetensors")["weight"]
        self.updates = json.loads((directory / "state.json").read_text())["updates"]


def saved(root: Path, value: float, updates: int) -> Path:
    learner = VectorLearner(value)
    learner.updates = updates
    return save_checkpoint(learner, root, config_yaml="algorithm: toy\n")


def test_round_trip_and_manifest(tmp_path):
    path = saved(tmp_path, 1.5, 10)
    assert path == tmp_path / "update-000010"
    assert (tmp_path / LATEST).read_text() == "update-000010\n"
    manifest = read_manifest(path)
    assert manifest["update"] == 10
    assert sorted(manifest["files"]) == ["config.yaml", "state.json", "weights.safetensors"]
    # safetensors: 8-byte length + JSON header (padded to a multiple of 8) + 4 float32 = 16 data bytes
    (header_len,) = struct.unpack("<Q", (path / "weights.safetensors").read_bytes()[:8])
    assert manifest["files"]["weights.safetensors"]["bytes"] == 8 + header_len + 4 * 4
    learner = VectorLearner()
    assert load_checkpoint(learner, tmp_path) == path
    assert learner.updates == 10 and learner.weight.tolist() == [1.5, 1.5, 1.5, 1.5]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    saved(tmp_path, 1.0, 2)
    crashing = VectorLearner(2.0, crash_after_bytes=20)
    crashing.updates = 4
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(crashing, tmp_path, config_yaml="")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["update-000002"]  # temp dir removed
    assert (tmp_path / LATEST).read_text() == "update-000002\n"
    learner = VectorLearner()
    load_checkpoint(learner, tmp_path)
    assert learner.updates == 2 and learner.weight.tolist() == [1.0] * 4


def test_torn_temp_dir_of_a_killed_process_is_never_picked_up(tmp_path):
    saved(tmp_path, 1.0, 2)
    torn = tmp_path / ".update-000004.tmp-999999"  # SIGKILL before the rename: no manifest, torn file
    torn.mkdir()
    (torn / "weights.safetensors").write_bytes(b"\x10\x00")
    (tmp_path / LATEST).unlink()  # even without the pointer, only complete checkpoints count
    assert latest_checkpoint(tmp_path) == tmp_path / "update-000002"
    assert resolve_checkpoint(tmp_path) == tmp_path / "update-000002"
    prune_checkpoints(tmp_path, keep=3)
    assert not torn.exists()


def test_latest_pointer_to_a_missing_dir_falls_back_to_newest(tmp_path):
    saved(tmp_path, 1.0, 2)
    saved(tmp_path, 1.0, 3)
    write_atomic(tmp_path / LATEST, "update-000009\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "update-000003"


def test_resave_same_update_replaces_it(tmp_path):
    saved(tmp_path, 1.0, 5)
    saved(tmp_path, 7.0, 5)
    learner = VectorLearner()
    load_checkpoint(learner, tmp_path / "update-000005")
    assert learner.weight.tolist() == [7.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "update-000005"]  # no .old-* left


def test_prune_keeps_the_newest(tmp_path):
    for u in (1, 2, 3, 4, 5):
        saved(tmp_path, float(u), u)
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["update-000001", "update-000002", "update-000003"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["update-000004", "update-000005"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere' does not exist \(expected a run directory"):
        resolve_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no complete checkpoint found"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="empty: missing manifest.json; not a complete checkpoint"):
        read_manifest(tmp_path / "empty")


def test_truncated_file_is_named(tmp_path):
    path = saved(tmp_path, 1.0, 1)
    weights = path / "weights.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 4)
    with pytest.raises(CheckpointError, match=rf"weights.safetensors: truncated: it has {size - 4} bytes, "
                                              rf"the manifest says {size}"):
        load_checkpoint(VectorLearner(), tmp_path)


def test_flipped_byte_fails_the_hash(tmp_path):
    path = saved(tmp_path, 1.0, 1)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different float
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="weights.safetensors: corrupt: its sha256 differs"):
        verify_checkpoint(path)


def test_missing_listed_file(tmp_path):
    path = saved(tmp_path, 1.0, 1)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json: missing file listed in"):
        verify_checkpoint(path)


def test_corrupt_manifest(tmp_path):
    path = saved(tmp_path, 1.0, 1)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json: corrupt manifest \("):
        read_manifest(path)
    (path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"corrupt manifest: it must map 'update' .* got \[1, 2\]"):
        read_manifest(path)


@pytest.mark.parametrize(("payload", "message"), [
    (b"\x01\x02", "truncated safetensors header: file has 2 bytes, needs at least 8"),
    (struct.pack("<Q", 4096) + b"{}", "truncated safetensors header: it declares 4096 header bytes but the "
                                      "file has 10 bytes"),
    (struct.pack("<Q", 4) + b"{{{{", "corrupt safetensors header: not JSON"),
    (struct.pack("<Q", 58) + b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}   ' + b"\0" * 8,
     "truncated safetensors data: tensors end at byte 82 but the file has 74 bytes"),  # 8 + 58 + 16 = 82
])
def test_safetensors_header_checks(tmp_path, payload, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=message):
        check_safetensors_header(path)


def test_valid_safetensors_header_passes(tmp_path):
    save_file({"w": torch.zeros(4)}, tmp_path / "ok.safetensors")
    check_safetensors_header(tmp_path / "ok.safetensors")


def test_learner_load_failure_is_wrapped(tmp_path):
    saved(tmp_path, 1.0, 1)

    class Incompatible(VectorLearner):
        def load(self, directory: Path) -> None:
            raise RuntimeError("size mismatch for weight: copying a param with shape [4], model has [8]")

    with pytest.raises(CheckpointError, match=r"update-000001: the learner could not load it: RuntimeError: "
                                              r"size mismatch"):
        load_checkpoint(Incompatible(), tmp_path)


def test_load_must_restore_updates(tmp_path):
    saved(tmp_path, 1.0, 3)

    class Forgetful(VectorLearner):
        def load(self, directory: Path) -> None:
            self.weight = load_file(directory / "weights.safetensors")["weight"]

    with pytest.raises(CheckpointError, match="the learner restored updates=0, but the manifest says 3"):
        load_checkpoint(Forgetful(), tmp_path)


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "latest"
    write_atomic(target, "a\n")
    write_atomic(target, "b\n")
    assert target.read_text() == "b\n"
    assert os.listdir(tmp_path) == ["latest"]


def test_load_latest_good_takes_latest_silently_and_fails_clearly_when_none_loads(tmp_path, recwarn):
    from repro_env.agents.checkpoint import load_latest_good

    saved(tmp_path, 1.0, 2)
    saved(tmp_path, 3.0, 4)
    learner = VectorLearner()
    assert load_latest_good(learner, tmp_path) == tmp_path / "update-000004"
    assert learner.updates == 4 and torch.equal(learner.weight, torch.full((4,), 3.0)) and not recwarn.list
    for update in (2, 4):
        path = tmp_path / f"update-{update:06d}" / "weights.safetensors"
        path.write_bytes(path.read_bytes()[:-1])  # truncated
    with pytest.raises(CheckpointError, match=r"no checkpoint could be loaded \(2 tried\); the newest: "
                                              r".*update-000004/weights.safetensors: truncated"):
        load_latest_good(VectorLearner(), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no complete checkpoint found"):
        load_latest_good(VectorLearner(), tmp_path / "empty")
