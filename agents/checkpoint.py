"""Atomic, verified checkpoints of a learner: ``checkpoints/update-000010/`` under a run directory.

A checkpoint is whatever ``Learner.save`` writes (safetensors + JSON) plus two files the trainer
adds: ``config.yaml`` (the resolved run config, so a checkpoint is self-contained for ``repro-env
eval``) and ``manifest.json`` (the update count and every file's size and sha256). Writing is
atomic: the learner saves into a hidden temporary directory in the same parent, every file and the
directory are fsynced, then ``os.replace`` renames it into place and the ``latest`` pointer file is
replaced the same way. A crash at any point leaves either the previous checkpoint or the new one,
never a half-written directory that a resume would pick up (temporary directories start with a dot
and are ignored). Loading verifies the manifest and every safetensors header before calling
``Learner.load``, so truncation and corruption surface as a ``CheckpointError`` that names the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from repro_env.config import describe
from repro_env.errors import CheckpointError, ConfigError

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
_NAME = re.compile(r"^update-(\d{6,})$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors refuses headers above 100 MB too


def checkpoint_name(update: int) -> str:
    """``update-000010``: names sort in update order."""
    return f"update-{update:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Replace the file ``path`` with ``text`` so a reader sees the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[Path]:
    """Create ``run_dir`` if needed and hold an exclusive lock on it for the ``with`` block.

    The lock is ``fcntl.flock`` on ``run_dir/.lock``, which holds the holder's PID; the kernel
    releases it when the holder exits, however it exits, so a stale file never blocks a later run.
    A second run on the same directory gets a ``ConfigError`` naming the holder's PID: two runs
    would interleave metrics, overwrite each other's config and checkpoints, and prune each
    other's checkpoints in progress.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"field 'out_dir' {str(run_dir)!r} cannot be used as a run directory: {e.strerror} "
                          f"({e.filename}); choose a directory you can write to") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"field 'out_dir' {str(run_dir)!r} is in use by another run (PID {holder}, which "
                              f"holds {run_dir / LOCK}); wait for it to finish, or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def save_checkpoint(learner: Any, root: Path, *, config_yaml: str) -> Path:
    """Write ``learner``'s state to ``root/update-NNNNNN`` atomically and point ``root/latest`` at it.

    ``learner.save`` writes into ``root/.update-NNNNNN.tmp-PID``; the manifest is written last, then
    the directory is renamed into place. An exception from ``learner.save`` removes the temporary
    directory and propagates; the previous checkpoint and ``latest`` are untouched.
    """
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(int(learner.updates))
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        learner.save(tmp)
        (tmp / CONFIG).write_text(config_yaml, encoding="utf-8")
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with path.open("rb") as f:
                os.fsync(f.fileno())
            files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"update": int(learner.updates), "files": files}
        with (tmp / MANIFEST).open("w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for sub in sorted({p.parent for p in tmp.rglob("*")} | {tmp}):
            _fsync_dir(sub)
        final = root / name
        if final.exists():  # re-saving an update (resume after a crash): swap, then drop the old one
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(root / LATEST, name + "\n")
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (those with a manifest), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, else the newest complete one, else None."""
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if _NAME.match(target.name) and (target / MANIFEST).is_file():
            return target
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary dirs); return the deleted."""
    found = list_checkpoints(root)
    latest = latest_checkpoint(root)
    doomed = [p for p in found[:-keep] if p != latest] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    for stale in root.glob(".update-*.tmp-*") if root.is_dir() else ():
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    return doomed


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a ``checkpoints/`` dir or a run dir.

    Raises ``CheckpointError`` when ``path`` does not exist or holds no complete checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a run directory or "
                              f"a checkpoints/update-NNNNNN directory)")
    if (path / MANIFEST).is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise CheckpointError(f"{path}: no complete checkpoint found (no {MANIFEST} in it, and no "
                          f"{CHECKPOINTS}/update-NNNNNN/{MANIFEST} under it); an interrupted write "
                          f"leaves only a hidden .update-*.tmp-* directory, which is never loaded")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a checkpoint; ``CheckpointError`` if missing or malformed."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {MANIFEST}; not a complete checkpoint")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt manifest ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
            or not isinstance(manifest.get("update"), int):
        raise CheckpointError(f"{path}: corrupt manifest: it must map 'update' to an int and 'files' "
                              f"to a mapping, got {describe(manifest)}")
    return manifest


def check_safetensors_header(path: Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` starts with a complete, parseable safetensors header.

    Format: 8 bytes little-endian u64 N, then N bytes of JSON mapping tensor names to
    ``{dtype, shape, data_offsets}``; the data that follows must reach the largest end offset.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors header: file has {size} bytes, "
                                  f"needs at least 8 for the header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: truncated safetensors header: it declares {n} header bytes "
                                  f"but the file has {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header: not JSON ({e})") from e
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if ends and 8 + n + max(ends) > size:
        raise CheckpointError(f"{path}: truncated safetensors data: tensors end at byte {8 + n + max(ends)} "
                              f"but the file has {size} bytes")


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest (presence, size, sha256) and every safetensors header.

    Returns the manifest; raises ``CheckpointError`` naming the first bad file and what is wrong.
    """
    manifest = read_manifest(directory)
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing file listed in {directory / MANIFEST}")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            what = "truncated" if size < entry.get("bytes", 0) else "wrong size"
            raise CheckpointError(f"{path}: {what}: it has {size} bytes, "
                                  f"the manifest says {entry.get('bytes')}")
        if path.suffix == ".safetensors":
            check_safetensors_header(path)
        if _sha256(path) != entry.get("sha256"):
            raise CheckpointError(f"{path}: corrupt: its sha256 differs from the manifest's "
                                  f"(the file changed after the checkpoint was written)")
    return manifest


def load_checkpoint(learner: Any, path: str | Path) -> Path:
    """Verify the checkpoint at ``path`` (see :func:`resolve_checkpoint`) and ``learner.load`` it.

    Any failure inside ``learner.load`` (a shape mismatch, a missing tensor) is re-raised as a
    ``CheckpointError`` that names the directory. Returns the checkpoint directory.
    """
    directory = resolve_checkpoint(path)
    manifest = verify_checkpoint(directory)
    try:
        learner.load(directory)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{directory}: the learner could not load it: {type(e).__name__}: {e}") from e
    if int(learner.updates) != manifest["update"]:
        raise CheckpointError(f"{directory}: the learner restored updates={learner.updates}, but the "
                              f"manifest says {manifest['update']}; its load() must restore 'updates'")
    return directory


def load_latest_good(learner: Any, root: Path) -> Path:
    """Load the newest checkpoint under ``root`` that verifies and loads, newest (``latest``) first.

    A corrupt or unloadable checkpoint (a flipped byte, a torn file after a disk fault) is skipped
    with a ``UserWarning`` naming it and why, and the previous one is tried, as long as one loads:
    the run then continues from there (its later metrics rows are dropped by the caller). Raises
    the newest checkpoint's ``CheckpointError`` when none loads.
    """
    latest = latest_checkpoint(root)
    if latest is None:
        return load_checkpoint(learner, root)  # raises the "no complete checkpoint" error
    older = [p for p in list_checkpoints(root) if p.name < latest.name]  # names sort in update order
    candidates = [latest, *reversed(older)]  # never past ``latest``: newer ones are redone, not trusted
    errors: list[CheckpointError] = []
    for directory in candidates:
        try:
            found = load_checkpoint(learner, directory)
        except CheckpointError as e:
            errors.append(e)
            continue
        if errors:
            warnings.warn(f"skipped {len(errors)} newer checkpoint(s) that could not be loaded, resuming from "
                          f"{found}: {'; '.join(map(str, errors))}", UserWarning, stacklevel=2)
        return found
    raise CheckpointError(f"{root}: no checkpoint could be loaded ({len(errors)} tried); the newest: "
                          f"{errors[0]}") from errors[0]
