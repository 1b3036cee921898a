"""Graph sources as plugins, and :func:`load_graph`, which loads any of them through a binary cache.

A loader is a :class:`GraphLoader` subclass with a ``name``: the technique family ``kg_loader`` of the registry.
Plugins return loader classes from the hook ``tessera_kg_loaders()`` (tessera's own loaders register through the
very same hook, in :mod:`tessera.graphs.loaders.builtin`); they are checked when the plugins are built, listed by
``tessera plugins`` and filtered by the allow / block lists like every technique. A *source* names a loader and its argument: ``wordnet``,
``pykeen:nations``, ``go``, ``commonsense``, ``rdf:path/to/file.ttl`` (a bare path to an RDF file works too).

The first load of a source parses it and writes the graph's binary form under
``<tessera_home()>/kg/<source>-<fingerprint>/``; later loads read that (WordNet: about 30 s of parsing vs well
under a second). The fingerprint covers the loader and its version, its argument, its input (asset digest, file
size and mtime) and the store format, so a changed source or loader is parsed again.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from tessera.graphs.store import STORE_FORMAT, GraphError, KnowledgeGraph

_LOADED: dict[Path, KnowledgeGraph] = {}


class GraphLoader(ABC):
    """A source of knowledge graphs: ``name`` on the command line, ``load()`` builds the graph."""

    #: The source name (``wordnet``, ``pykeen``...): ``tessera kg info NAME[:ARGUMENT]``.
    name: ClassVar[str]
    #: One line for ``tessera kg info``.
    summary: ClassVar[str] = ""
    #: What the argument after ``NAME:`` is (None: the loader takes no argument).
    argument_help: ClassVar[str | None] = None
    #: True when the argument may be left out (``wn18rr`` or ``wn18rr:mirrored``).
    argument_optional: ClassVar[bool] = False
    #: Bump when ``load()`` builds a different graph from the same input: cached graphs of older versions are stale.
    version: ClassVar[int] = 1

    def __init__(self, argument: str | None = None):
        if argument and self.argument_help is None:
            raise GraphError(f"graph source {self.name} takes no argument (got {self.name}:{argument})")
        if not argument and self.argument_help is not None and not self.argument_optional:
            raise GraphError(f"graph source {self.name} needs an argument: {self.name}:<{self.argument_help}>")
        self.argument = argument

    @property
    def source(self) -> str:
        """The source string this loader was made from."""
        return f"{self.name}:{self.argument}" if self.argument else self.name

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the loaded graph would change (input digests, sizes, versions)."""

    @abstractmethod
    def load(self) -> KnowledgeGraph:
        """Parse the source into a :class:`~tessera.graphs.store.KnowledgeGraph` (no caching here)."""


def asset_fingerprint(name: str) -> str:
    """The digest of offline asset ``name`` (checked to be fetched): a loader's fingerprint from an asset."""
    from tessera.core.assets import MANIFEST, asset_path

    return json.loads((asset_path(name) / MANIFEST).read_text(encoding="utf-8"))["digest"]


def resolve(source: str, plugins) -> GraphLoader:
    """The loader for ``source`` (``NAME``, ``NAME:ARGUMENT`` or a path to an RDF file), from the ``kg_loader``
    techniques of ``plugins`` (a :class:`~tessera.core.plugins.Plugins`)."""
    names = plugins.registry.names("kg_loader")
    name, _, argument = source.partition(":")
    if name not in names:
        if "rdf" in names and (Path(source).suffix or "/" in source):
            return plugins.registry.get("kg_loader", "rdf").cls(source)
        raise GraphError(
            f"unknown graph source {source!r}: choose one of {', '.join(names)} "
            "(NAME or NAME:ARGUMENT, or a path to an RDF file)"
        )
    return plugins.registry.get("kg_loader", name).cls(argument or None)


def cache_dir(loader: GraphLoader) -> Path:
    """Where the binary form of ``loader``'s graph lives."""
    from tessera.core.assets import tessera_home

    key = f"{STORE_FORMAT}\0{loader.version}\0{loader.source}\0{loader.fingerprint()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", loader.source)[-48:].strip("_.") or loader.name
    return tessera_home() / "kg" / f"{slug}-{digest}"


def load_graph(source: str, plugins, cache: bool = True, refresh: bool = False) -> KnowledgeGraph:
    """Load the graph ``source`` names with the loaders of ``plugins``, from its binary cache when present (and
    once per process).

    ``cache=False`` parses the source and neither reads nor writes the cache; ``refresh=True`` parses it and
    rewrites the cache.
    """
    loader = resolve(source, plugins)
    return loader.load() if not cache else load_cached(loader, refresh)


def load_cached(loader: GraphLoader, refresh: bool = False) -> KnowledgeGraph:
    """``loader``'s graph from its binary cache (once per process), parsed and cached when absent or stale (or
    ``refresh``): what :func:`load_graph` does, for a loader built on another (``wn18rr`` on ``wordnet``)."""
    directory = cache_dir(loader)
    if refresh:
        _LOADED.pop(directory, None)
    if directory not in _LOADED:
        if refresh or KnowledgeGraph.cached_meta(directory) is None:
            graph = loader.load()
            graph.save(directory, source={"source": loader.source, "fingerprint": loader.fingerprint()})
        else:
            graph = KnowledgeGraph.load(directory)
        _LOADED[directory] = graph
    return _LOADED[directory]
