"""The :class:`KnowledgeGraph`: integer ids, compact triple arrays, CSR adjacency both ways; traversal in
:mod:`.traversal`, the cached binary form in :mod:`.persistence`."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tessera.graphs.store.errors import GraphError
from tessera.graphs.store.persistence import cached_meta, read_graph, save_graph
from tessera.graphs.store.traversal import Adjacency, Traversal


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
        self._traversal = Traversal(self.adjacency, self.triples, self.num_entities)

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
        in the order reached (seeds first); see :meth:`tessera.graphs.store.traversal.Traversal.k_hop`."""
        return self._traversal.k_hop(seeds, hops, relation_mask, direction)

    # --- text ----------------------------------------------------------------------------------------------------

    def fact_triples(self, edges) -> list[tuple[str, str, str]]:
        """``(head label, relation, tail label)`` of each edge id."""
        return [(self.labels[h], self.relations[r], self.labels[t]) for h, r, t in self.triples[np.asarray(edges, int)]]

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
        view.add_edges_from((int(h), int(t), i, {"relation": int(r)}) for i, (h, r, t) in enumerate(self.triples))
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
        """Write the graph to ``directory`` atomically (see :func:`~tessera.graphs.store.persistence.save_graph`)."""
        return save_graph(self, directory, source)

    @staticmethod
    def cached_meta(directory: Path) -> dict | None:
        """The ``graph.json`` of a cached graph in the current format, or None when absent, partial or stale."""
        return cached_meta(directory)

    @classmethod
    def load(cls, directory: Path) -> KnowledgeGraph:
        """Read a graph written by :meth:`save` (memory-checked before any array is read)."""
        return cls(**read_graph(directory))
