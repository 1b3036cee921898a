"""Traversal of a knowledge graph: the CSR adjacency in both directions and k-hop neighbourhoods over it.

A k-hop expansion walks the CSR slices in Python while the frontier is small and switches to vectorised numpy
gathers over per-thread scratch arrays once it grows, so a query costs time in proportion to its neighbourhood.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from tessera.graphs.store.errors import GraphError

#: A hop from at most this many nodes walks the CSR in Python; from more, it is one vectorised numpy gather.
_FEW_NODES = 4
_INT32_MAX = 2**31 - 1


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


class Scratch:
    """Per-thread work arrays of the vectorised hop of :meth:`Traversal.k_hop`, reused across calls so that a
    query costs time in proportion to its neighbourhood, not to the graph. A node (edge) is already reached when
    its stamp equals the hop's generation, so nothing is cleared between calls."""

    def __init__(self, num_entities: int, num_triples: int):
        self.node_stamp = np.zeros(num_entities, dtype=np.int32)
        self.edge_stamp = np.zeros(num_triples, dtype=np.int32)
        self.node_mark = np.zeros(num_entities, dtype=np.int32)
        self.edge_mark = np.zeros(num_triples, dtype=np.int32)
        self.generation = 0

    def next_generation(self) -> int:
        """Start a hop: the stamp that marks what it reaches (the stamps are reset when the counter would overflow)."""
        self.generation += 1
        if self.generation == _INT32_MAX:
            self.node_stamp[:] = 0
            self.edge_stamp[:] = 0
            self.generation = 1
        return self.generation


def distinct(values: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """``values`` without repeats, first occurrences kept in order; ``mark`` is scratch indexed by value.

    Cheaper than ``np.unique`` (no sort): each value writes its position, the last write wins, and a value is
    kept where its own position survived (done on the reversed array so that the first occurrence is kept).
    """
    reverse = values[::-1]
    positions = np.arange(len(reverse), dtype=np.int32)
    mark[reverse] = positions
    return reverse[mark[reverse] == positions][::-1]


class Traversal:
    """k-hop neighbourhoods over ``adjacency`` (of ``triples``, whose relation column filters the edges); the
    Python views and the per-thread scratch arrays are built on first use. Thread-safe."""

    def __init__(self, adjacency: Adjacency, triples: np.ndarray, num_entities: int):
        self.adjacency = adjacency
        self.triples = triples
        self.num_entities = num_entities
        self._local = threading.local()

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

    def _expand_many(self, frontier: np.ndarray, scratch: Scratch, generation: int, relation_mask, direction: str):
        """One hop from a long ``frontier``, as one vectorised gather: the newly reached nodes and edges."""
        neighbors, edges, forward = self.adjacency.expand(frontier)
        if direction != "both" or relation_mask is not None:
            keep = forward == (direction == "out") if direction != "both" else True
            if relation_mask is not None:
                keep = keep & relation_mask[self.triples[edges, 1]]
            neighbors, edges = neighbors[keep], edges[keep]
        edges = distinct(edges[scratch.edge_stamp[edges] != generation], scratch.edge_mark)
        scratch.edge_stamp[edges] = generation
        reached = distinct(neighbors[scratch.node_stamp[neighbors] != generation], scratch.node_mark)
        scratch.node_stamp[reached] = generation
        return reached.astype(np.int64), edges.astype(np.int64)

    def _scratch(self) -> Scratch:
        if not hasattr(self._local, "scratch"):
            self._local.scratch = Scratch(self.num_entities, len(self.triples))
        return self._local.scratch

    @functools.cached_property
    def _views(self) -> tuple[memoryview, ...]:
        adjacency = self.adjacency
        return tuple(memoryview(a) for a in (adjacency.indptr, adjacency.neighbors, adjacency.edges, adjacency.forward))

    @functools.cached_property
    def _relation_view(self) -> memoryview:
        return memoryview(np.ascontiguousarray(self.triples[:, 1]))
