"""The model registry: named, numbered versions of exports in a database and a store, stages such as production,
and verified backups (``tessera registry``, docs/registry.md).

:mod:`.database` (where the database is, its tables and schema version, one-line errors), :mod:`.source` (what
``add`` reads from a run directory), :mod:`.files` (copies checked by sha256), :mod:`.store` (:class:`~.store.Registry`: add, list, show, promote, resolve a
``registry:NAME@STAGE`` reference), :mod:`.backup` (backup, verify, restore) and :mod:`.cli`.
"""

from tessera.registry.database import RegistryError
from tessera.registry.store import Registry, is_reference, resolve_reference

__all__ = ["Registry", "RegistryError", "is_reference", "resolve_reference"]
