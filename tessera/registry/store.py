"""The model registry: named, numbered versions of exports, kept in a store and recorded in a database.

``add`` copies a complete run's export (with the stage's ``config.yaml``, ``run.json``, ``metrics.json`` and
``report.md``, so the copy serves like the run) into ``<store>/<name>/<version>/``, checking every copied file
against the sha256 of what was read, then records the version in one transaction: the sha256 and size of each
file, the composition, the data's hash, the test metrics and the lineage. Versions count up from 1 per name and
are never reused. A stage (``production``, ``staging``...) points at one version of a name; ``promote`` moves it and
keeps the history. A reference is ``NAME`` (the latest version), ``NAME@VERSION``, ``NAME@latest`` or
``NAME@STAGE``; ``registry:NAME@STAGE`` names a registered model wherever tessera takes a model or run directory
(``tessera serve``, ``tessera predict``, ``model.pretrained``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from tessera.registry.database import RegistryError, database_errors, engine, registry_url, store_root, table
from tessera.registry.files import copy_verified, file_problems, incoming_directory
from tessera.registry.source import data_record, read_source

#: The prefix of a registry reference where tessera takes a directory.
PREFIX = "registry:"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
STAGE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,99}")
#: Test metrics where less is better (every other is compared as more is better).
LOWER_IS_BETTER = ("loss", "perplexity")
#: The metric ``promote --if-better`` compares when none is named: the first both versions have.
DEFAULT_METRICS = ("accuracy", "macro_f1", "perplexity", "loss")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else a :class:`RegistryError`."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise RegistryError(
            f"model name {name!r} is not valid: use letters, digits, '_', '.' or '-' (starting with a letter or digit)"
        )
    return name


def check_stage(stage: str) -> str:
    """``stage`` if it is a valid stage name (a letter first, so it never reads as a version), else an error."""
    if not STAGE_PATTERN.fullmatch(stage or "") or stage == "latest":
        raise RegistryError(
            f"stage name {stage!r} is not valid: use a word starting with a letter (production, staging...), not latest"
        )
    return stage


def parse_reference(reference: str) -> tuple[str, int | str | None]:
    """``(name, selector)`` of ``NAME``, ``NAME@VERSION`` (an int), ``NAME@latest`` or ``NAME@STAGE`` (a str);
    the selector is None for the latest version."""
    name, _, selector = reference.removeprefix(PREFIX).partition("@")
    check_name(name)
    if not selector or selector == "latest":
        return name, None
    if selector.isdigit():
        return name, int(selector)
    return name, check_stage(selector)


def is_reference(value: str) -> bool:
    """Whether ``value`` is a registry reference (``registry:NAME[@VERSION|@STAGE]``)."""
    return str(value).startswith(PREFIX)


def _better(metric: str, new: float, old: float) -> bool:
    """Whether ``new`` is at least as good as ``old`` for ``metric``."""
    lower = any(metric == m or metric.endswith("_" + m) for m in LOWER_IS_BETTER)
    return new <= old if lower else new >= old


class Registry:
    """A registry: its database (``url``, see :func:`~tessera.registry.database.registry_url`) and its store
    directory (``store``, see :func:`~tessera.registry.database.store_root`)."""

    def __init__(self, url: str | None = None, store: str | Path | None = None):
        self.url = registry_url(url)
        self.store = store_root(self.url, str(store) if store else None)
        self._engine = None

    @property
    def engine(self):
        """The database engine, opened and schema-checked on first use."""
        if self._engine is None:
            self._engine = engine(self.url)
        return self._engine

    def open(self):
        """Open the database (checked: not locked beyond the timeout, not corrupt, not of a newer schema)."""
        return self.engine

    def close(self) -> None:
        """Close the database's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def add(self, run_dir: Path | str, name: str, stage: str | None = None) -> dict:
        """Register the export of the complete run (or job stage) ``run_dir`` as the next version of ``name``;
        return the version (:meth:`version`)."""
        from sqlalchemy.exc import IntegrityError

        from tessera.core.assets.store import digest

        check_name(name)
        source = read_source(run_dir, stage)
        data_hash, data = data_record(source.cfg)
        self.open()  # the database is checked (locked, corrupt, newer) before anything is copied
        with incoming_directory(self.store / ".incoming") as incoming:
            files = self._copy_in(source, incoming)
            listing = {path: {"sha256": sha, "size": size} for path, (sha, size) in files.items()}
            values = {
                "name": name,
                "created": now(),
                "source": str(source.stage_dir),
                "kind": source.kind,
                "digest": digest(listing),
                "size": sum(size for _, size in files.values()),
                "composition": source.composition,
                "data_hash": data_hash,
                "data": data,
                "metrics": source.metrics.get("test") or {},
                "lineage": self._lineage(source),
            }
            with database_errors(self.url):
                for _ in range(20):  # another writer may take the same number first: count again
                    try:
                        number = self._insert(values, files, incoming)
                        break
                    except IntegrityError:
                        continue
                else:
                    raise RegistryError(f"could not number a new version of {name}: too many concurrent writers")
        return self.version(name, number)

    def _copy_in(self, source, incoming: Path) -> dict[str, tuple[str, int]]:
        try:
            files = {
                f"export/{path.relative_to(source.export).as_posix()}": copy_verified(
                    path, incoming / "export" / path.relative_to(source.export)
                )
                for path in sorted(source.export.rglob("*"))
                if path.is_file()
            }
            files.update({name: copy_verified(path, incoming / name) for name, path in source.kept.items()})
        except OSError as error:
            raise RegistryError(
                f"cannot copy the export into the registry store {self.store} ({error.strerror or error}): "
                "free space or set --store / $TESSERA_REGISTRY_STORE to a writable directory"
            ) from None
        return files

    def _insert(self, values: dict, files: dict[str, tuple[str, int]], incoming: Path) -> int:
        """Insert the next version of ``values["name"]`` and move ``incoming`` into its place, in one transaction."""
        from sqlalchemy import func, select

        versions, name = table("model_versions"), values["name"]
        moved = None
        try:
            with self.engine.begin() as connection:
                last = connection.execute(select(func.max(versions.c.version)).where(versions.c.name == name))
                number = (last.scalar() or 0) + 1
                location = f"{name}/{number}"
                row = connection.execute(versions.insert().values(version=number, location=location, **values))
                version_id = row.inserted_primary_key[0]
                connection.execute(
                    table("model_files").insert(),
                    [{"version_id": version_id, "path": p, "sha256": s, "size": n} for p, (s, n) in files.items()],
                )
                final = self.store / location
                if final.exists():  # left by an add that was killed before it committed: no version owns it
                    shutil.rmtree(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(incoming, final)
                moved = final
        except BaseException:
            if moved is not None:
                os.replace(moved, incoming)
            raise
        return number

    def _lineage(self, source) -> dict:
        """The source's lineage, with the registered version its base model was, when it was a registry
        reference (the version that held the stage when the run started)."""
        lineage = dict(source.lineage)
        base = lineage.get("base_model", "")
        if is_reference(base):
            started = datetime.fromtimestamp(source.config_file.stat().st_mtime, UTC).isoformat(timespec="seconds")
            name, selector = parse_reference(base)
            number = self._holder_at(name, selector, started) if isinstance(selector, str) else selector
            if number is not None:  # None: the run was trained against another registry
                lineage["base_version"] = {"name": name, "version": number}
        return lineage

    def _holder_at(self, name: str, stage: str, when: str) -> int | None:
        from sqlalchemy import select

        history = table("model_promotions")
        with database_errors(self.url), self.engine.connect() as connection:
            found = connection.execute(
                select(history.c.version)
                .where(history.c.name == name, history.c.stage == stage, history.c.at <= when)
                .order_by(history.c.id.desc())
                .limit(1)
            ).scalar()
        return found

    def _rows(self, name: str | None = None) -> list[dict]:
        from sqlalchemy import select

        versions = table("model_versions")
        query = select(versions).order_by(versions.c.name, versions.c.version)
        if name is not None:
            query = query.where(versions.c.name == name)
        with database_errors(self.url), self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
            stages = table("model_stages")
            held: dict[tuple[str, int], list[str]] = {}
            for row in connection.execute(select(stages).order_by(stages.c.stage)):
                held.setdefault((row.name, row.version), []).append(row.stage)
        for row in rows:
            row["stages"] = held.get((row["name"], row["version"]), [])
        return rows

    def versions(self, name: str | None = None) -> list[dict]:
        """Every version (of ``name``), oldest first, each with the stages that point at it (``stages``)."""
        if name is not None:
            check_name(name)
        return self._rows(name)

    def names(self) -> list[str]:
        """The registered model names."""
        return sorted({row["name"] for row in self._rows()})

    def number(self, reference: str) -> tuple[str, int]:
        """``(name, version)`` that ``reference`` (``NAME[@VERSION|@latest|@STAGE]``) names; a
        :class:`RegistryError` naming what exists when it names nothing."""
        from sqlalchemy import select

        name, selector = parse_reference(reference)
        rows = self._rows(name)
        if not rows:
            known = ", ".join(self.names()) or "none yet"
            raise RegistryError(
                f"no model named {name!r} in the registry (registered: {known}): see tessera registry list"
            )
        if selector is None:
            return name, rows[-1]["version"]
        if isinstance(selector, int):
            if selector not in {row["version"] for row in rows}:
                raise RegistryError(
                    f"{name} has no version {selector} (versions: {', '.join(str(r['version']) for r in rows)}): "
                    f"see tessera registry show {name}"
                )
            return name, selector
        stages = table("model_stages")
        with database_errors(self.url), self.engine.connect() as connection:
            held = connection.execute(
                select(stages.c.version).where(stages.c.name == name, stages.c.stage == selector)
            ).scalar()
        if held is None:
            given = sorted({stage for row in rows for stage in row["stages"]})
            raise RegistryError(
                f"no version of {name} is in stage {selector!r} (stages: {', '.join(given) or 'none'}): "
                f"tessera registry promote {name} VERSION --stage {selector}"
            )
        return name, held

    def version(self, name: str, number: int) -> dict:
        """One version: its row (name, version, created, source, location, kind, digest, size, composition,
        data_hash, data, metrics, lineage, stages), its ``files`` (``{path: (sha256, size)}``), its ``directory``
        in the store and the stage ``history`` of its name."""
        from sqlalchemy import select

        row = next((r for r in self._rows(name) if r["version"] == number), None)
        if row is None:
            self.number(f"{name}@{number}")  # raises the one-line error naming what exists
        files, history = table("model_files"), table("model_promotions")
        with database_errors(self.url), self.engine.connect() as connection:
            row["files"] = {
                r.path: (r.sha256, r.size)
                for r in connection.execute(select(files).where(files.c.version_id == row["id"]).order_by(files.c.path))
            }
            row["history"] = [
                dict(r._mapping)
                for r in connection.execute(select(history).where(history.c.name == name).order_by(history.c.id))
            ]
        row["directory"] = self.store / row["location"]
        return row

    def get(self, reference: str) -> dict:
        """The version ``reference`` names (:meth:`version`)."""
        return self.version(*self.number(reference))

    def problems(self, row: dict, deep: bool = True) -> list[str]:
        """What is missing or corrupt in the store's copy of version ``row`` (one line a file)."""
        return list(file_problems(row["directory"], row["files"], deep).values())

    def resolve(self, reference: str) -> Path:
        """The store directory of the version ``reference`` names (``export/`` with the stage's config, served like a
        run), after checking every file's sha256."""
        row = self.get(reference)
        problems = self.problems(row)
        if problems:
            raise RegistryError(
                f"{row['name']} version {row['version']} is damaged in the store: {problems[0]}"
                f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}: "
                "restore it with tessera registry restore BACKUP"
            )
        return row["directory"]

    def promote(
        self, name: str, number: int, stage: str, if_better: bool = False, metric: str | None = None
    ) -> tuple[bool, str]:
        """Point ``stage`` of ``name`` at version ``number``; ``if_better``: only when its test ``metric`` (default:
        the first of :data:`DEFAULT_METRICS` both have) is not worse than the current holder's. Returns
        ``(promoted, a line saying what happened)``."""
        from sqlalchemy import select

        check_stage(stage)
        row = self.version(name, number)
        stages = table("model_stages")
        with database_errors(self.url), self.engine.begin() as connection:
            current = connection.execute(
                select(stages.c.version).where(stages.c.name == name, stages.c.stage == stage)
            ).scalar()
            if current == number:
                return True, f"{name} version {number} is already {stage}"
            note = None
            if if_better and current is not None:
                better, note = _compare(name, row, self.version(name, current), metric)
                if not better:
                    return False, f"not promoted: {note} ({stage} stays version {current})"
            at = now()
            if current is None:
                connection.execute(stages.insert().values(name=name, stage=stage, version=number, promoted=at))
            else:
                connection.execute(
                    stages.update()
                    .where(stages.c.name == name, stages.c.stage == stage)
                    .values(version=number, promoted=at)
                )
            connection.execute(
                table("model_promotions")
                .insert()
                .values(name=name, stage=stage, version=number, previous=current, at=at, note=note)
            )
        was = f" (was version {current})" if current is not None else ""
        return True, f"{name} version {number} is now {stage}{was}{f': {note}' if note else ''}"


def _compare(name: str, new: dict, held: dict, metric: str | None) -> tuple[bool, str]:
    """Whether version ``new`` of ``name`` is not worse than ``held`` by test ``metric`` (default: the first of
    :data:`DEFAULT_METRICS` both have), and a line saying so."""
    shared = [
        m for m in DEFAULT_METRICS if _number(new["metrics"], m) is not None and _number(held["metrics"], m) is not None
    ]
    metric = metric or (shared[0] if shared else None)
    if metric is None:
        raise RegistryError(
            f"versions {new['version']} and {held['version']} of {name} share no test metric to compare: "
            "name one with --metric"
        )
    for row in (new, held):
        if _number(row["metrics"], metric) is None:
            numeric = [key for key in row["metrics"] if _number(row["metrics"], key) is not None]
            raise RegistryError(
                f"{name} version {row['version']} has no test metric {metric!r} (it has {', '.join(numeric)}): "
                "choose another --metric"
            )
    ours, theirs = _number(new["metrics"], metric), _number(held["metrics"], metric)
    if _better(metric, ours, theirs):
        return True, f"test {metric} {ours:.4f} vs {theirs:.4f}"
    return False, (
        f"{name} version {new['version']} has test {metric} {ours:.4f}, worse than version {held['version']}'s "
        f"{theirs:.4f}"
    )


def _number(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def resolve_reference(value: str) -> str:
    """``value`` unchanged, or for ``registry:NAME[@VERSION|@STAGE]`` the store directory of that version, checked
    (for ``tessera serve`` / ``tessera predict``, which take a run directory)."""
    if not is_reference(value):
        return value
    return str(Registry().resolve(value))


@functools.cache
def _export_of(value: str, url: str, store: str) -> Path:
    return Registry(url, store).resolve(value) / "export"


def reference_export(value: str) -> Path:
    """The export directory (a Hugging Face model) of the registered version ``registry:...`` names (for
    ``model.pretrained``), resolved once a process: a run keeps the version it started with."""
    registry = Registry()
    export = _export_of(value, registry.url, str(registry.store))
    if not (export / "config.json").is_file():
        raise RegistryError(f"{value} is an output-space ensemble, not one model: it cannot be model.pretrained")
    return export
