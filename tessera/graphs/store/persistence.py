"""The cached binary form of a knowledge graph: one ``.npy`` file per array, ``strings.json`` (keys, labels,
aliases) and ``graph.json`` (counts, :data:`STORE_FORMAT`, where the graph came from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tessera.graphs.store.errors import GraphError
from tessera.graphs.store.memory import check_memory
from tessera.graphs.store.traversal import Adjacency

if TYPE_CHECKING:
    from tessera.graphs.store.graph import KnowledgeGraph

#: Version of the cached binary form; bump when :func:`save_graph` changes.
STORE_FORMAT = 2


def save_graph(graph: KnowledgeGraph, directory: Path, source: dict | None = None) -> Path:
    """Write ``graph`` to ``directory`` atomically: one ``.npy`` file per array, ``strings.json`` (keys, labels,
    aliases) and ``graph.json`` (counts, format, ``source``)."""
    from tessera.core.files import atomic_directory

    arrays = {
        "triples": graph.triples,
        "alias_entities": graph.alias_entities,
        "alias_priors": graph.alias_priors,
        **{f"adjacency_{part}": getattr(graph.adjacency, part) for part in ("indptr", "neighbors", "edges", "forward")},
        **{f"split_{name}": indices for name, indices in graph.splits.items()},
    }
    strings = {
        "entities": graph.entities,
        "labels": None if graph.labels == graph.entities else graph.labels,
        "relations": graph.relations,
        "relation_labels": graph.relation_labels,
        "alias_names": graph.alias_names,
    }
    meta = {
        "format": STORE_FORMAT,
        "name": graph.name,
        "entities": graph.num_entities,
        "relations": graph.num_relations,
        "triples": graph.num_triples,
        "splits": list(graph.splits),
        "source": source or {},
    }
    with atomic_directory(Path(directory)) as partial:
        for key, array in arrays.items():
            np.save(partial / f"{key}.npy", array, allow_pickle=False)
        (partial / "strings.json").write_text(json.dumps(strings, ensure_ascii=False), encoding="utf-8")
        (partial / "graph.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return Path(directory)


def cached_meta(directory: Path) -> dict | None:
    """The ``graph.json`` of a cached graph in the current format, or None when absent, partial or stale."""
    try:
        meta = json.loads((Path(directory) / "graph.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == STORE_FORMAT else None


def read_graph(directory: Path) -> dict:
    """The constructor arguments of :class:`~tessera.graphs.store.graph.KnowledgeGraph` for the graph
    :func:`save_graph` wrote to ``directory`` (memory-checked before any array is read)."""
    directory = Path(directory)
    meta = cached_meta(directory)
    if meta is None:
        raise GraphError(f"{directory} holds no cached graph of format {STORE_FORMAT}: load the source again")
    check_memory(meta["triples"], meta["entities"], f"cached graph {directory}")

    def array(key: str) -> np.ndarray:
        return np.load(directory / f"{key}.npy", allow_pickle=False)

    strings = json.loads((directory / "strings.json").read_text(encoding="utf-8"))
    adjacency = Adjacency(*(array(f"adjacency_{part}") for part in ("indptr", "neighbors", "edges", "forward")))
    return {
        "name": meta["name"],
        "entities": strings["entities"],
        "relations": strings["relations"],
        "triples": array("triples"),
        "labels": strings["labels"],
        "relation_labels": strings["relation_labels"],
        "aliases": (strings["alias_names"], array("alias_entities"), array("alias_priors")),
        "splits": {name: array(f"split_{name}") for name in meta["splits"]},
        "adjacency": adjacency,
    }
