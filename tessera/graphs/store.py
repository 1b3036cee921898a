"""The knowledge-graph store: integer ids, compact triple arrays, CSR adjacency both ways, a cached binary form.

A :class:`KnowledgeGraph` holds

- ``entities`` (unique keys: an IRI, a WordNet synset name, a GO id) with display ``labels`` and ``aliases``
  (surface forms with a prior, for entity linking);
- ``relations`` with ``relation_labels``, the phrase used to verbalize a fact ("is a kind of");
- ``triples``, an ``int32`` array of shape ``(n, 3)``: head, relation, tail ids;
- optional ``splits`` (``{"train": triple indices, ...}``, for link prediction);
- the adjacency in both directions as one CSR structure (``indptr``, neighbours, edge ids and a flag saying
  whether each entry follows its edge forwards), built once, so a k-hop expansion is a few vectorised numpy
  operations whatever the direction;
- networkx views for graph algorithms (shortest paths, PageRank, components), each built once on first use.

Memory: the store costs about :data:`BYTES_PER_TRIPLE` bytes per triple (the triple array and both CSR
directions) and :data:`BYTES_PER_ENTITY` per entity (key, label, id map); parsing a source costs more while it
runs (:data:`PARSE_BYTES_PER_TRIPLE`, and rdflib's own figure in :mod:`tessera.graphs.rdf`). :func:`check_memory`
refuses a graph whose estimated cost exceeds the memory available (or ``$TESSERA_KG_MEMORY_BYTES``) before
anything is allocated.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tessera.core.errors import TesseraError

#: Version of the cached binary form; bump when :meth:`KnowledgeGraph.save` changes.
STORE_FORMAT = 2
#: Store cost per triple: 12 bytes of triple ids plus 2 x 9 bytes of CSR (neighbour, edge id and direction flag,
#: once from each end).
BYTES_PER_TRIPLE = 30
#: Store cost per entity: its key, label and id-map entry as Python strings and dict slots (measured average).
BYTES_PER_ENTITY = 260
#: Peak memory per triple of building a graph from Python objects (measured: WordNet through NLTK 1,890 bytes,
#: GO's SQLite rows 1,000): what the loaders check before they parse.
PARSE_BYTES_PER_TRIPLE = 2000
MEMORY_ENV = "TESSERA_KG_MEMORY_BYTES"
#: A hop from at most this many nodes walks the CSR in Python; from more, it is one vectorised numpy gather.
_FEW_NODES = 4
_INT32_MAX = 2**31 - 1


class GraphError(TesseraError):
    """A knowledge-graph source is malformed, unknown or too large."""


class GraphTooLargeError(GraphError):
    """A graph would not fit in the memory available; raised before anything is allocated."""


def available_memory() -> int:
    """Bytes a graph may use: ``$TESSERA_KG_MEMORY_BYTES`` if set, else the kernel's ``MemAvailable``."""
    if os.environ.get(MEMORY_ENV):
        return int(os.environ[MEMORY_ENV])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown platform: do not refuse


def check_memory(triples: int, entities: int, what: str, bytes_per_triple: int = BYTES_PER_TRIPLE) -> None:
    """Raise :class:`GraphTooLargeError` when ``triples`` and ``entities`` would not fit in memory.

    ``bytes_per_triple`` is the cost of the step about to run (parsing through rdflib costs far more per triple
    than the store itself); the message states it so the user can size the machine.
    """
    needed = triples * bytes_per_triple + entities * BYTES_PER_ENTITY
    budget = available_memory()
    if needed > budget:
        raise GraphTooLargeError(
            f"{what}: about {triples:,} triples x {bytes_per_triple} bytes + {entities:,} entities x "
            f"{BYTES_PER_ENTITY} bytes = {needed / 1e9:.2f} GB, more than the {budget / 1e9:.2f} GB available: "
            f"use a machine with more memory or a smaller graph (${MEMORY_ENV} sets the budget)"
        )


@dataclass(frozen=True)
class Adjacency:
    """Both directions of the adjacency in CSR form: the entries of node ``i`` are ``indptr[i]:indptr[i + 1]``,
    each a neighbour, the edge (triple) id that links them and whether the edge leaves ``i`` (``forward``)."""

    indptr: np.ndarray
    neighbors: np.ndarray
    edges: np.ndarray
    forward: np.ndarray

    @classmethod
    def build(cls, triples: np.ndarray, num_nodes: int) -> Adjacency:
        """The adjacency of ``triples``: every triple listed at its head (forward) and at its tail (backward)."""
        heads, tails = triples[:, 0], triples[:, 2]
        ids = np.arange(len(triples), dtype=np.int32)
        sources = np.concatenate([heads, tails])
        order = np.argsort(sources, kind="stable")
        indptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(sources, minlength=num_nodes), out=indptr[1:])
        return cls(
            indptr,
            np.concatenate([tails, heads])[order].astype(np.int32),
            np.concatenate([ids, ids])[order],
            (order < len(triples)),
        )

    def expand(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(neighbours, edge ids, forward flags)`` of every entry of ``nodes``, concatenated."""
        starts = self.indptr[nodes]
        lengths = self.indptr[nodes + 1] - starts
        positions = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return self.neighbors[positions], self.edges[positions], self.forward[positions]


class _Scratch:
    """Per-thread work arrays of the vectorised hop of :meth:`KnowledgeGraph.k_hop`, reused across calls so that a
    query costs time in proportion to its neighbourhood, not to the graph. A node (edge) is already reached when
    its stamp equals the hop's generation, so nothing is cleared between calls."""

    def __init__(self, num_entities: int, num_triples: int):
        self.node_stamp = np.zeros(num_entities, dtype=np.int32)
        self.edge_stamp = np.zeros(num_triples, dtype=np.int32)
        self.node_mark = np.zeros(num_entities, dtype=np.int32)
        self.edge_mark = np.zeros(num_triples, dtype=np.int32)
        self.generation = 0

    def next_generation(self) -> int:
        self.generation += 1
        if self.generation == _INT32_MAX:
            self.node_stamp[:] = 0
            self.edge_stamp[:] = 0
            self.generation = 1
        return self.generation


def _distinct(values: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """``values`` without repeats, first occurrences kept in order; ``mark`` is scratch indexed by value.

    Cheaper than ``np.unique`` (no sort): each value writes its position, the last write wins, and a value is
    kept where its own position survived (done on the reversed array so that the first occurrence is kept).
    """
    reverse = values[::-1]
    positions = np.arange(len(reverse), dtype=np.int32)
    mark[reverse] = positions
    return reverse[mark[reverse] == positions][::-1]


class KnowledgeGraph:
    """Entities and relations as integer ids, triples as an ``(n, 3)`` int32 array, CSR adjacency both ways."""

    def __init__(
        self,
        name: str,
        entities: list[str],
        relations: list[str],
        triples: np.ndarray,
        *,
        labels: list[str] | None = None,
        relation_labels: list[str] | None = None,
        aliases: tuple[list[str], np.ndarray, np.ndarray] | None = None,
        splits: dict[str, np.ndarray] | None = None,
        adjacency: Adjacency | None = None,
    ):
        self.name = name
        self.entities = list(entities)
        self.relations = list(relations)
        self.triples = np.ascontiguousarray(triples, dtype=np.int32).reshape(-1, 3)
        self.labels = list(labels) if labels is not None else list(self.entities)
        self.relation_labels = (
            list(relation_labels) if relation_labels is not None else [r.replace("_", " ") for r in self.relations]
        )
        if aliases is None:
            aliases = ([], np.empty(0, np.int32), np.empty(0, np.float32))
        #: Surface forms for linking: ``alias_names[i]`` names entity ``alias_entities[i]`` with ``alias_priors[i]``.
        self.alias_names = list(aliases[0])
        self.alias_entities = np.asarray(aliases[1], dtype=np.int32)
        self.alias_priors = np.asarray(aliases[2], dtype=np.float32)
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in (splits or {}).items()}
        self._check()
        #: The adjacency of every entity, both directions.
        self.adjacency = adjacency if adjacency is not None else Adjacency.build(self.triples, self.num_entities)
        self._local = threading.local()

    def _check(self) -> None:
        if len(self.labels) != self.num_entities or len(self.relation_labels) != self.num_relations:
            raise GraphError(f"graph {self.name}: labels do not match the entities or relations")
        if not (len(self.alias_names) == len(self.alias_entities) == len(self.alias_priors)):
            raise GraphError(f"graph {self.name}: alias names, entities and priors differ in length")
        if len(self.triples):
            low, high = self.triples.min(axis=0), self.triples.max(axis=0)
            if low.min() < 0 or high[0] >= self.num_entities or high[2] >= self.num_entities:
                raise GraphError(f"graph {self.name}: a triple names an entity id outside 0..{self.num_entities - 1}")
            if high[1] >= self.num_relations:
                raise GraphError(f"graph {self.name}: a triple names a relation id outside 0..{self.num_relations - 1}")

    # --- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_triples(
        cls,
        name: str,
        triples,
        *,
        labels: dict[str, str] | None = None,
        relation_labels: dict[str, str] | None = None,
        aliases: list[tuple[str, str, float]] | None = None,
        splits: dict[str, list[int]] | None = None,
    ) -> KnowledgeGraph:
        """A graph from ``(head, relation, tail)`` key triples; ids follow first appearance.

        ``labels`` and ``relation_labels`` map keys to display text; ``aliases`` are ``(alias, entity key, prior)``
        (entities they name that appear in no triple are added).
        """
        entity_ids: dict[str, int] = {}
        relation_ids: dict[str, int] = {}
        rows = [
            (
                entity_ids.setdefault(h, len(entity_ids)),
                relation_ids.setdefault(r, len(relation_ids)),
                entity_ids.setdefault(t, len(entity_ids)),
            )
            for h, r, t in triples
        ]
        alias_rows = [
            (alias, entity_ids.setdefault(key, len(entity_ids)), prior) for alias, key, prior in aliases or []
        ]
        entities, relations = list(entity_ids), list(relation_ids)
        return cls(
            name,
            entities,
            relations,
            np.array(rows, dtype=np.int32).reshape(-1, 3),
            labels=[(labels or {}).get(e, e) for e in entities],
            relation_labels=[(relation_labels or {}).get(r, r.replace("_", " ")) for r in relations],
            aliases=(
                [a for a, _, _ in alias_rows],
                np.array([e for _, e, _ in alias_rows], dtype=np.int32),
                np.array([p for _, _, p in alias_rows], dtype=np.float32),
            ),
            splits=splits,
        )

    # --- size and lookup ---------------------------------------------------------------------------------------

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    @property
    def num_triples(self) -> int:
        return len(self.triples)

    def __len__(self) -> int:
        return self.num_triples

    def __repr__(self) -> str:
        return (
            f"KnowledgeGraph({self.name!r}, {self.num_entities:,} entities, {self.num_relations} relations, "
            f"{self.num_triples:,} triples)"
        )

    @functools.cached_property
    def _entity_index(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.entities)}

    @functools.cached_property
    def _relation_index(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.relations)}

    def entity_id(self, key: str) -> int | None:
        """The id of entity ``key``, or None when the graph has no such entity."""
        return self._entity_index.get(key)

    def relation_id(self, key: str) -> int:
        """The id of relation ``key``; an unknown relation raises :class:`GraphError` listing the valid ones."""
        found = self._relation_index.get(key)
        if found is None:
            shown = ", ".join(self.relations[:40]) + (", ..." if self.num_relations > 40 else "")
            raise GraphError(f"graph {self.name} has no relation {key!r}: its relations are {shown}")
        return found

    @functools.cached_property
    def degree(self) -> np.ndarray:
        """Number of triples each entity takes part in (as head or tail)."""
        return np.diff(self.adjacency.indptr)

    def split(self, name: str) -> np.ndarray:
        """The ``(n, 3)`` triples of split ``name`` (all triples for ``"all"``)."""
        if name == "all":
            return self.triples
        if name not in self.splits:
            raise GraphError(f"graph {self.name} has no split {name!r}: it has {', '.join(self.splits) or 'none'}")
        return self.triples[self.splits[name]]

    # --- traversal ---------------------------------------------------------------------------------------------

    def relation_mask(self, relations) -> np.ndarray | None:
        """A boolean mask over relation ids admitting ``relations`` (names); None when ``relations`` is empty."""
        if not relations:
            return None
        mask = np.zeros(self.num_relations, dtype=bool)
        mask[[self.relation_id(r) for r in relations]] = True
        return mask

    def k_hop(
        self, seeds, hops: int = 2, relation_mask: np.ndarray | None = None, direction: str = "both"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``hops``-hop neighbourhood of the entity ids ``seeds``: ``(node ids, edge ids)``, each listed once
        in the order reached (seeds first).

        Edges are followed ``"out"`` (head to tail), ``"in"`` or ``"both"`` ways, only through relations that
        ``relation_mask`` admits. The edges are those traversed, i.e. every edge on a path of at most ``hops``
        steps from a seed. While the frontier is small, a hop walks the CSR slices in Python (microseconds); once
        it grows, every further hop is one vectorised gather over per-thread scratch arrays. Thread-safe.
        """
        if direction not in ("out", "in", "both"):
            raise GraphError(f"direction {direction!r} is not one of out, in, both")
        visited = dict.fromkeys(np.asarray(seeds, dtype=np.int64).ravel().tolist())  # ordered sets
        traversed: dict[int, None] = {}
        frontier, hop = list(visited), 0
        while hop < hops and frontier and len(frontier) <= _FEW_NODES:
            frontier = self._expand_few(frontier, visited, traversed, relation_mask, direction)
            hop += 1
        nodes = [np.fromiter(visited, dtype=np.int64, count=len(visited))]
        edges = [np.fromiter(traversed, dtype=np.int64, count=len(traversed))]
        if hop < hops and frontier:
            scratch = self._scratch()
            generation = scratch.next_generation()
            scratch.node_stamp[nodes[0]] = generation
            scratch.edge_stamp[edges[0]] = generation
            frontier = np.asarray(frontier, dtype=np.int64)
            while hop < hops and len(frontier):
                frontier, reached_edges = self._expand_many(frontier, scratch, generation, relation_mask, direction)
                nodes.append(frontier)
                edges.append(reached_edges)
                hop += 1
        return (np.concatenate(nodes), np.concatenate(edges)) if len(nodes) > 1 else (nodes[0], edges[0])

    def _expand_few(self, frontier: list, visited: dict, traversed: dict, relation_mask, direction: str) -> list:
        """One hop from a short ``frontier``, in Python over the CSR slices; returns the newly reached nodes."""
        indptr, neighbors, edges, forward = self._views
        filtered = direction != "both" or relation_mask is not None
        relations = self._relation_view if relation_mask is not None else None
        reached = []
        for node in frontier:
            start, end = indptr[node], indptr[node + 1]
            near, links = neighbors[start:end].tolist(), edges[start:end].tolist()
            if filtered:
                outgoing = forward[start:end].tolist()
                keep = [
                    (direction == "both" or outgoing[i] == (direction == "out"))
                    and (relations is None or relation_mask[relations[links[i]]])
                    for i in range(len(links))
                ]
                near = [n for n, k in zip(near, keep) if k]
                links = [e for e, k in zip(links, keep) if k]
            traversed.update(dict.fromkeys(links))
            for neighbor in near:
                if neighbor not in visited:
                    visited[neighbor] = None
                    reached.append(neighbor)
        return reached

    def _expand_many(self, frontier: np.ndarray, scratch: _Scratch, generation: int, relation_mask, direction: str):
        """One hop from a long ``frontier``, as one vectorised gather: the newly reached nodes and edges."""
        neighbors, edges, forward = self.adjacency.expand(frontier)
        if direction != "both" or relation_mask is not None:
            keep = forward == (direction == "out") if direction != "both" else True
            if relation_mask is not None:
                keep = keep & relation_mask[self.triples[edges, 1]]
            neighbors, edges = neighbors[keep], edges[keep]
        edges = _distinct(edges[scratch.edge_stamp[edges] != generation], scratch.edge_mark)
        scratch.edge_stamp[edges] = generation
        reached = _distinct(neighbors[scratch.node_stamp[neighbors] != generation], scratch.node_mark)
        scratch.node_stamp[reached] = generation
        return reached.astype(np.int64), edges.astype(np.int64)

    def _scratch(self) -> _Scratch:
        if not hasattr(self._local, "scratch"):
            self._local.scratch = _Scratch(self.num_entities, self.num_triples)
        return self._local.scratch

    @functools.cached_property
    def _views(self) -> tuple[memoryview, ...]:
        adjacency = self.adjacency
        return tuple(memoryview(a) for a in (adjacency.indptr, adjacency.neighbors, adjacency.edges, adjacency.forward))

    @functools.cached_property
    def _relation_view(self) -> memoryview:
        return memoryview(np.ascontiguousarray(self.triples[:, 1]))

    # --- text ----------------------------------------------------------------------------------------------------

    def fact_triples(self, edges) -> list[tuple[str, str, str]]:
        """``(head label, relation, tail label)`` of each edge id."""
        return [
            (self.labels[h], self.relations[r], self.labels[t]) for h, r, t in self.triples[np.asarray(edges, int)]
        ]

    def verbalize(self, edges) -> list[str]:
        """One short sentence per edge id: ``"<head label> <relation phrase> <tail label>"``."""
        return [
            f"{self.labels[h]} {self.relation_labels[r]} {self.labels[t]}"
            for h, r, t in self.triples[np.asarray(edges, int)]
        ]

    # --- networkx views ------------------------------------------------------------------------------------------

    @functools.cached_property
    def directed_view(self):
        """A networkx ``MultiDiGraph`` (nodes are entity ids, edge keys are triple ids, ``relation`` attribute),
        built on first use; use it for shortest paths, PageRank, components."""
        import networkx as nx

        view = nx.MultiDiGraph(name=self.name)
        view.add_nodes_from(range(self.num_entities))
        view.add_edges_from(
            (int(h), int(t), i, {"relation": int(r)}) for i, (h, r, t) in enumerate(self.triples)
        )
        return view

    @functools.cached_property
    def undirected_view(self):
        """A simple undirected networkx ``Graph`` over entity ids, built once on first use (``nx.ego_graph`` on a
        directed graph with ``undirected=True`` copies the whole graph on every call; this view avoids that)."""
        import networkx as nx

        view = nx.Graph(name=self.name)
        view.add_nodes_from(range(self.num_entities))
        view.add_edges_from(self.triples[:, [0, 2]].tolist())
        return view

    # --- cached binary form --------------------------------------------------------------------------------------

    def save(self, directory: Path, source: dict | None = None) -> Path:
        """Write the graph to ``directory`` atomically: one ``.npy`` file per array, ``strings.json`` (keys, labels,
        aliases) and ``graph.json`` (counts, format, ``source``)."""
        from tessera.core.files import atomic_directory

        arrays = {
            "triples": self.triples,
            "alias_entities": self.alias_entities,
            "alias_priors": self.alias_priors,
            **{f"adjacency_{part}": getattr(self.adjacency, part)
               for part in ("indptr", "neighbors", "edges", "forward")},
            **{f"split_{name}": indices for name, indices in self.splits.items()},
        }
        strings = {
            "entities": self.entities,
            "labels": None if self.labels == self.entities else self.labels,
            "relations": self.relations,
            "relation_labels": self.relation_labels,
            "alias_names": self.alias_names,
        }
        meta = {
            "format": STORE_FORMAT,
            "name": self.name,
            "entities": self.num_entities,
            "relations": self.num_relations,
            "triples": self.num_triples,
            "splits": list(self.splits),
            "source": source or {},
        }
        with atomic_directory(Path(directory)) as partial:
            for key, array in arrays.items():
                np.save(partial / f"{key}.npy", array, allow_pickle=False)
            (partial / "strings.json").write_text(json.dumps(strings, ensure_ascii=False), encoding="utf-8")
            (partial / "graph.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return Path(directory)

    @staticmethod
    def cached_meta(directory: Path) -> dict | None:
        """The ``graph.json`` of a cached graph in the current format, or None when absent, partial or stale."""
        try:
            meta = json.loads((Path(directory) / "graph.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if meta.get("format") == STORE_FORMAT else None

    @classmethod
    def load(cls, directory: Path) -> KnowledgeGraph:
        """Read a graph written by :meth:`save` (memory-checked before any array is read)."""
        directory = Path(directory)
        meta = cls.cached_meta(directory)
        if meta is None:
            raise GraphError(f"{directory} holds no cached graph of format {STORE_FORMAT}: load the source again")
        check_memory(meta["triples"], meta["entities"], f"cached graph {directory}")

        def array(key: str) -> np.ndarray:
            return np.load(directory / f"{key}.npy", allow_pickle=False)

        strings = json.loads((directory / "strings.json").read_text(encoding="utf-8"))
        adjacency = Adjacency(*(array(f"adjacency_{part}") for part in ("indptr", "neighbors", "edges", "forward")))
        return cls(
            meta["name"],
            strings["entities"],
            strings["relations"],
            array("triples"),
            labels=strings["labels"],
            relation_labels=strings["relation_labels"],
            aliases=(strings["alias_names"], array("alias_entities"), array("alias_priors")),
            splits={name: array(f"split_{name}") for name in meta["splits"]},
            adjacency=adjacency,
        )
