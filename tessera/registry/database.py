"""The registry's database: where it is, its tables (SQLAlchemy Core), its schema version, and one-line errors.

The database is any SQLAlchemy URL (``--db URL``, ``$TESSERA_REGISTRY_URL``; default a SQLite file
``$TESSERA_HOME/registry/registry.db``), so a team can point every machine at one server database. A plain path is
taken as a SQLite file. The table ``tessera_schema`` holds the schema version: a database written by a newer tessera
is refused rather than misread. A database that is locked, corrupt or not a registry is a :class:`RegistryError`
in one line.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from tessera.core.errors import TesseraError

URL_ENV = "TESSERA_REGISTRY_URL"
STORE_ENV = "TESSERA_REGISTRY_STORE"
LOCK_TIMEOUT_ENV = "TESSERA_REGISTRY_LOCK_TIMEOUT"
#: The schema this tessera reads and writes; a database with a higher version is refused.
SCHEMA_VERSION = 1


class RegistryError(TesseraError):
    """A registry database, store, reference or backup that cannot be used as asked."""


class DatabaseLocked(RegistryError):
    """Another process holds the registry database locked for longer than the lock timeout."""


class DatabaseCorrupt(RegistryError):
    """The registry database file is damaged (not a database, malformed, or without its schema version)."""


def registry_url(given: str | None = None) -> str:
    """The database URL: ``given``, else ``$TESSERA_REGISTRY_URL``, else the SQLite file under ``$TESSERA_HOME``. A
    value without ``://`` is a path to a SQLite file."""
    from tessera.core.assets import tessera_home

    value = given or os.environ.get(URL_ENV) or str(tessera_home() / "registry" / "registry.db")
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def store_root(url: str, given: str | None = None) -> Path:
    """Where the registered exports are kept: ``given``, else ``$TESSERA_REGISTRY_STORE``, else ``store/`` beside a
    SQLite database (``$TESSERA_HOME/registry/store`` for a server database)."""
    from tessera.core.assets import tessera_home

    value = given or os.environ.get(STORE_ENV)
    if value:
        return Path(value).expanduser().resolve()
    database = sqlite_file(url)
    return database.parent / "store" if database else tessera_home() / "registry" / "store"


def _tables():
    from sqlalchemy import (
        JSON,
        Column,
        ForeignKey,
        Integer,
        MetaData,
        String,
        Table,
        Text,
        UniqueConstraint,
    )

    metadata = MetaData()
    Table("tessera_schema", metadata, Column("version", Integer, nullable=False))
    Table(
        "model_versions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created", String(40), nullable=False),
        Column("source", Text, nullable=False),
        Column("location", Text, nullable=False),
        Column("kind", String(40), nullable=False),
        Column("digest", String(64), nullable=False),
        Column("size", Integer, nullable=False),
        Column("composition", JSON, nullable=False),
        Column("data_hash", String(64)),
        Column("data", JSON, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("lineage", JSON, nullable=False),
        UniqueConstraint("name", "version"),
    )
    Table(
        "model_files",
        metadata,
        Column("version_id", Integer, ForeignKey("model_versions.id"), primary_key=True),
        Column("path", String(1000), primary_key=True),
        Column("sha256", String(64), nullable=False),
        Column("size", Integer, nullable=False),
    )
    Table(
        "model_stages",
        metadata,
        Column("name", String(200), primary_key=True),
        Column("stage", String(100), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("promoted", String(40), nullable=False),
    )
    Table(
        "model_promotions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False),
        Column("stage", String(100), nullable=False),
        Column("version", Integer, nullable=False),
        Column("previous", Integer),
        Column("at", String(40), nullable=False),
        Column("note", Text),
    )
    return metadata


#: The registry's tables (one MetaData, built on first use so ``tessera --help`` does not import SQLAlchemy).
_METADATA = None


def metadata():
    """The SQLAlchemy ``MetaData`` of the registry's tables."""
    global _METADATA
    if _METADATA is None:
        _METADATA = _tables()
    return _METADATA


def table(name: str):
    """One of the registry's tables."""
    return metadata().tables[name]


def describe(url: str) -> str:
    """The database for a message: its file for SQLite, else the URL without its password."""
    from sqlalchemy.engine import make_url

    database = sqlite_file(url)
    return str(database) if database else make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(url: str):
    """Turn the database driver's errors into one-line :class:`RegistryError` s that say what to do."""
    from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

    where = describe(url)
    try:
        yield
    except IntegrityError:
        raise RegistryError(
            f"another process changed the registry {where} at the same moment: run the command again"
        ) from None
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error).splitlines()[0]
        if "locked" in reason or "busy" in reason:
            raise DatabaseLocked(
                f"the registry database {where} is locked by another process ({reason}): retry when it is done "
                f"(or raise ${LOCK_TIMEOUT_ENV}, in seconds)"
            ) from None
        if "not a database" in reason or "malformed" in reason:
            raise DatabaseCorrupt(
                f"the registry database {where} is corrupt ({reason}): restore it with tessera registry restore BACKUP"
            ) from None
        raise RegistryError(f"cannot use the registry database {where} ({reason}): check --db / ${URL_ENV}") from None
    except DatabaseError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error).splitlines()[0]
        raise DatabaseCorrupt(
            f"the registry database {where} is corrupt ({reason}): restore it with tessera registry restore BACKUP"
        ) from None


def _create_schema(created, sqlite: bool) -> None:
    """Create the tables and the schema version in one transaction; another process creating them at the same
    moment is waited for (SQLite: ``BEGIN IMMEDIATE``) or found done."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import DatabaseError

    try:
        with created.begin() as connection:
            if sqlite:  # the driver would run the CREATE statements outside a transaction: take the write lock first
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            if "tessera_schema" in inspect(connection).get_table_names():
                return
            metadata().create_all(connection)
            connection.execute(table("tessera_schema").insert().values(version=SCHEMA_VERSION))
    except DatabaseError as error:
        if "already exists" not in str(error):
            raise


def engine(url: str):
    """A SQLAlchemy engine on ``url`` with the schema checked (and created in an empty database). A SQLite file's
    directory is created; a lock is waited for ``$TESSERA_REGISTRY_LOCK_TIMEOUT`` seconds (default 10)."""
    from sqlalchemy import create_engine, event, inspect, select

    database = sqlite_file(url)
    options = {}
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RegistryError(f"cannot create the registry directory {database.parent} ({error.strerror})") from None
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV) or 10)
        options["connect_args"] = {"timeout": timeout}
    with database_errors(url):
        try:
            created = create_engine(url, **options)
        except Exception as error:  # an unknown dialect or a missing driver: SQLAlchemy raises several types
            raise RegistryError(
                f"cannot use the registry database URL {describe(url)} ({error}): install its driver or fix --db / "
                f"${URL_ENV}"
            ) from None
        if database is not None:
            event.listen(created, "connect", lambda connection, _: connection.execute("PRAGMA foreign_keys=ON"))
        names = set(inspect(created).get_table_names())
        if "tessera_schema" not in names:
            if names:
                raise RegistryError(
                    f"{describe(url)} is a database but not a tessera registry (it has no tessera_schema table): "
                    "point --db at a registry or at a new database"
                )
            _create_schema(created, database is not None)
        with created.connect() as connection:
            found = connection.execute(select(table("tessera_schema").c.version)).scalar()
    if found is None:
        raise DatabaseCorrupt(
            f"the registry database {describe(url)} has no schema version (its tessera_schema table is empty): "
            "restore it with tessera registry restore BACKUP"
        )
    if found > SCHEMA_VERSION:
        raise RegistryError(
            f"the registry database {describe(url)} has schema version {found}, newer than this tessera's "
            f"{SCHEMA_VERSION}: upgrade tessera to use it"
        )
    return created
