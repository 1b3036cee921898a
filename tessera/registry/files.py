"""Copying and checking the registry's files by sha256."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from tessera.registry.database import RegistryError


def copy_verified(source: Path, target: Path, expected: str | None = None) -> tuple[str, int]:
    """Copy ``source`` to ``target`` (through a temporary file and a rename) and return ``(sha256, size)`` of what was
    read; the copy is read back and must hash the same. ``expected``: the sha256 ``source`` must have."""
    import hashlib

    from tessera.core.assets.store import sha256

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    hasher, size = hashlib.sha256(), 0
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            for block in iter(lambda: reader.read(1 << 20), b""):
                hasher.update(block)
                size += len(block)
                writer.write(block)
            writer.flush()
            os.fsync(writer.fileno())
        read = hasher.hexdigest()
        if expected is not None and read != expected:
            raise RegistryError(f"{source} does not match its recorded sha256 (it is corrupt)")
        if sha256(partial) != read:
            raise RegistryError(f"the copy of {source} at {target} does not read back the same: check the disk")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return read, size


def file_problems(directory: Path, files: dict[str, tuple[str, int]], deep: bool = True) -> dict[str, str]:
    """What is wrong with the recorded ``files`` (``{path: (sha256, size)}``) under ``directory``: ``{path: one line
    naming the file}`` ("is missing", "has N bytes, expected M", "does not match its sha256")."""
    from tessera.core.assets.store import sha256

    problems = {}
    for relative, (digest, size) in sorted(files.items()):
        path = directory / relative
        if not path.is_file():
            problems[relative] = f"{path} is missing"
        elif path.stat().st_size != size:
            problems[relative] = f"{path} has {path.stat().st_size} bytes, expected {size} (corrupt)"
        elif deep and sha256(path) != digest:
            problems[relative] = f"{path} does not match its sha256 (corrupt)"
    return problems


@contextmanager
def incoming_directory(root: Path):
    """A new directory under ``root`` for one ``add`` to copy into, removed when the block ends (unless moved away).
    It is claimed by a lock file beside it (``<dir>.lock``, locked while the block runs, released by the kernel when
    the process dies), so the leftovers of a killed ``add`` are told from another ``add`` at work and removed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        directory = root / uuid.uuid4().hex
        claim = directory.with_suffix(".lock").open("a")
    except OSError as error:
        raise RegistryError(
            f"cannot write the registry store {root.parent} ({error.strerror or error}): make it writable or set "
            "--store / $TESSERA_REGISTRY_STORE"
        ) from None
    fcntl.flock(claim, fcntl.LOCK_EX)
    for stale in root.glob("*.lock"):
        if stale == directory.with_suffix(".lock"):
            continue
        with stale.open("a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another add is copying
            shutil.rmtree(stale.with_suffix(""), ignore_errors=True)
            stale.unlink(missing_ok=True)
    with claim:
        try:
            directory.mkdir()
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            directory.with_suffix(".lock").unlink(missing_ok=True)
