"""Backups of a registry: the database and every registered version's files, verified by hashes.

``backup DEST`` snapshots the database first (SQLite's online backup API for a SQLite registry, which is safe
while others use it; a copy of every row into a SQLite file for a server database), then copies the files of every
version in that snapshot, each checked against the sha256 the database recorded, and writes ``MANIFEST.json`` (the
sha256 and size of every file of the backup) last. The backup is built in a hidden sibling of ``DEST`` and renamed
into place when complete, so a backup killed half way leaves ``DEST`` as it was (the previous backup, or nothing)
and a directory without a manifest is never taken for a backup. ``verify`` checks the live registry or a backup and
names each missing or corrupt file; ``restore SRC`` checks the backup, repairs or brings back every file of the
store that differs, then replaces the database with the backup's.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import uuid
from pathlib import Path

from tessera.core.files import atomic_directory, write_json
from tessera.registry.database import (
    SCHEMA_VERSION,
    DatabaseCorrupt,
    DatabaseLocked,
    RegistryError,
    database_errors,
    describe,
    metadata,
    sqlite_file,
)
from tessera.registry.files import copy_verified, file_problems
from tessera.registry.store import Registry, now

MANIFEST = "MANIFEST.json"
DATABASE = "registry.db"
#: The format of a backup directory (``MANIFEST.json``'s ``format``).
FORMAT = 1
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


def _write_error(error: OSError, dest: Path) -> RegistryError:
    """One line for a failed write to the backup destination ``dest``."""
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        return RegistryError(
            f"the backup destination {dest} is full ({reason}): free space or choose another destination; "
            "the previous backup there, if any, is untouched"
        )
    if error.errno in _READ_ONLY:
        return RegistryError(f"cannot write the backup to {dest} ({reason}): choose a writable destination")
    return RegistryError(f"the backup to {dest} failed ({reason}); the previous backup there, if any, is untouched")


def _snapshot(registry: Registry, target: Path) -> None:
    """Write the registry's database to the SQLite file ``target``."""
    registry.open()
    source = sqlite_file(registry.url)
    with database_errors(registry.url):
        if source is not None:
            reader, writer = sqlite3.connect(source), sqlite3.connect(target)
            try:
                reader.backup(writer)
            except sqlite3.OperationalError as error:
                if "locked" in str(error) or "busy" in str(error):
                    raise DatabaseLocked(
                        f"the registry database {source} is locked by another process ({error}): retry when it is done"
                    ) from None
                raise
            finally:
                writer.close()
                reader.close()
            return
        from sqlalchemy import create_engine

        copy_rows(registry.engine, create_engine(f"sqlite:///{target}"))


def copy_rows(source, target) -> None:
    """Copy every row of the registry's tables from the engine ``source`` into ``target`` (its tables created,
    emptied first), in one transaction on ``target``."""
    from sqlalchemy import select

    tables = metadata().sorted_tables
    with source.connect() as reader, target.begin() as writer:
        metadata().create_all(writer)
        for table in reversed(tables):
            writer.execute(table.delete())
        for table in tables:
            rows = [dict(row._mapping) for row in reader.execute(select(table))]
            if rows:
                writer.execute(table.insert(), rows)


def backup(registry: Registry, dest: Path | str) -> dict:
    """Back ``registry`` up into ``dest`` (a new or empty directory, or an earlier backup, which is replaced only when
    the new one is complete); return the manifest."""
    from tessera.core.assets.store import digest, sha256

    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST).is_file())):
        raise RegistryError(
            f"{dest} exists and is not a tessera registry backup: choose a new or empty directory, or an earlier backup"
        )
    try:
        with atomic_directory(dest, owned=True) as partial:
            _snapshot(registry, partial / DATABASE)
            copied = Registry(f"sqlite:///{partial / DATABASE}", store=registry.store)
            versions = [copied.version(row["name"], row["version"]) for row in copied.versions()]
            copied.close()
            files = {DATABASE: {"sha256": sha256(partial / DATABASE), "size": (partial / DATABASE).stat().st_size}}
            for row in versions:
                for relative, (sha, _) in row["files"].items():
                    source = registry.store / row["location"] / relative
                    if not source.is_file():
                        raise RegistryError(
                            f"{source} is missing from the registry store: restore it from an earlier backup "
                            "(tessera registry restore BACKUP) before backing up"
                        )
                    try:
                        target = f"store/{row['location']}/{relative}"
                        read, size = copy_verified(source, partial / target, expected=sha)
                    except RegistryError as error:
                        raise RegistryError(
                            f"{error}: restore it from an earlier backup (tessera registry restore BACKUP) before "
                            "backing up"
                        ) from None
                    files[target] = {"sha256": read, "size": size}
            manifest = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "created": now(),
                "database": describe(registry.url),
                "versions": [f"{row['name']}@{row['version']}" for row in versions],
                "digest": digest(files),
                "files": files,
            }
            write_json(partial / MANIFEST, manifest)  # last: a directory without it is an interrupted backup
    except OSError as error:
        raise _write_error(error, dest) from None
    return manifest


def _interrupted(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(f".{path.name}.*") if p.is_dir()) if path.parent.is_dir() else []


def read_manifest(src: Path) -> dict:
    """The manifest of the backup ``src``; a :class:`RegistryError` when it is no complete backup."""
    if not src.is_dir():
        left = _interrupted(src)
        hint = f" ({left[0]} is an interrupted backup: run tessera registry backup again)" if left else ""
        raise RegistryError(f"no backup at {src}{hint}")
    if not (src / MANIFEST).is_file():
        raise RegistryError(
            f"{src} is not a complete backup (no {MANIFEST}: the backup was interrupted or this is another directory): "
            "use another backup or run tessera registry backup again"
        )
    try:
        manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
        manifest["files"], manifest["schema_version"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RegistryError(f"the manifest of the backup {src} is unreadable ({error}): use another backup") from None
    if manifest.get("format") != FORMAT or manifest["schema_version"] > SCHEMA_VERSION:
        raise RegistryError(
            f"the backup {src} was written by a newer tessera (format {manifest.get('format')}, schema "
            f"{manifest['schema_version']}): restore it with that version"
        )
    return manifest


def verify_backup(src: Path | str) -> list[str]:
    """What is missing or corrupt in the backup ``src`` (one line each; empty when it is whole)."""
    from tessera.core.assets.store import digest

    src = Path(src).expanduser().resolve()
    manifest = read_manifest(src)
    files = {path: (entry["sha256"], entry["size"]) for path, entry in manifest["files"].items()}
    problems = list(file_problems(src, files).values())
    if digest(manifest["files"]) != manifest.get("digest"):
        problems.append(f"{src / MANIFEST} does not match its own digest (it was edited or is corrupt)")
    return problems


def verify_registry(registry: Registry) -> tuple[int, list[str]]:
    """``(files checked, problems)`` of the live registry: every file of every version, against its sha256."""
    checked, problems = 0, []
    for row in registry.versions():
        version = registry.version(row["name"], row["version"])
        checked += len(version["files"])
        problems += [f"{row['name']} version {row['version']}: {p}" for p in registry.problems(version)]
    return checked, problems


def restore(registry: Registry, src: Path | str, force: bool = False) -> tuple[int, int]:
    """Bring the registry back to the backup ``src``: every store file that is missing or differs is copied back
    (checked), then the database is replaced by the backup's. Refuses a damaged backup, and (unless ``force``) a
    registry holding versions the backup lacks. Returns ``(versions, files copied)``."""
    src = Path(src).expanduser().resolve()
    problems = verify_backup(src)
    if problems:
        more = f" (and {len(problems) - 1} more: tessera registry verify {src})" if len(problems) > 1 else ""
        raise RegistryError(f"the backup {src} is damaged, nothing restored: {problems[0]}{more}")
    backed_up = Registry(f"sqlite:///{src / DATABASE}", store=src / "store")
    versions = [backed_up.version(row["name"], row["version"]) for row in backed_up.versions()]
    backed_up.close()
    if not force:
        _refuse_losing_versions(registry, {(row["name"], row["version"]) for row in versions}, src)
    copied = 0
    try:
        for row in versions:
            target = registry.store / row["location"]
            for relative in file_problems(target, row["files"]):
                sha = row["files"][relative][0]
                copy_verified(src / "store" / row["location"] / relative, target / relative, expected=sha)
                copied += 1
        _restore_database(registry, src / DATABASE)
    except OSError as error:
        raise RegistryError(
            f"cannot write the registry at {registry.store} ({error.strerror or error}): free space or make it "
            "writable, then restore again"
        ) from None
    return len(versions), copied


def _refuse_losing_versions(registry: Registry, kept: set[tuple[str, int]], src: Path) -> None:
    try:
        live = {(row["name"], row["version"]) for row in registry.versions()}
    except DatabaseCorrupt:  # the backup is what there is (a locked or newer database is not replaced)
        return
    lost = sorted(live - kept)
    if lost:
        named = ", ".join(f"{name}@{number}" for name, number in lost[:5])
        raise RegistryError(
            f"the registry has versions the backup {src} lacks ({named}): restoring would forget them; "
            "back them up first or pass --force"
        )


def _restore_database(registry: Registry, backup_file: Path) -> None:
    """Replace the registry's database by the backup's: a SQLite file is rebuilt beside the live one and renamed
    over it (a corrupt live file is fine); a server database gets the backup's rows in one transaction."""
    target = sqlite_file(registry.url)
    registry.close()
    if target is None:
        from sqlalchemy import create_engine

        copy_rows(create_engine(f"sqlite:///{backup_file}"), registry.engine)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}")
    try:
        reader, writer = sqlite3.connect(backup_file), sqlite3.connect(partial)
        try:
            reader.backup(writer)
        finally:
            writer.close()
            reader.close()
        for stale in (target.with_name(target.name + suffix) for suffix in ("-journal", "-wal", "-shm")):
            stale.unlink(missing_ok=True)  # a journal of the replaced file must not be replayed on the restored one
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
