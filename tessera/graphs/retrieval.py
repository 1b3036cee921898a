"""Retrieval: the k-hop subgraph around linked entities, ranked, cut to a fact budget, as triples or text.

:class:`Retriever` links a text (or takes entity keys), expands ``hops`` hops through the admitted relations
(following edges ``out`` from head to tail, ``in``, or ``both`` ways), ranks the facts and keeps the best
``max_facts``. Ranking:

``pagerank``
    personalized PageRank on the retrieved subgraph, restarting at the linked entities; a fact scores the sum
    of its two ends' ranks, so facts close to several mentions and to well-connected neighbours come first.
``embedding``
    cosine similarity between the mean embedding of the linked entities and the fact's end that is not one of
    them (the better end when neither is), with entity embeddings from ``tessera kg embed``
    (:mod:`tessera.graphs.embeddings`).

An entity the graph does not have, or a text with no entity in it, gives an empty :class:`Retrieval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tessera.graphs.linking import EntityLinker, Mention
from tessera.graphs.store import GraphError, KnowledgeGraph

RANKINGS = ("pagerank", "embedding")
#: Which way edges are followed from the linked entities: from head to tail, the reverse, or both.
DIRECTIONS = ("out", "in", "both")


@dataclass
class Retrieval:
    """The facts retrieved for one query: edge (triple) ids, best first, with their scores."""

    graph: KnowledgeGraph
    seeds: np.ndarray
    edges: np.ndarray
    scores: np.ndarray
    mentions: list[Mention] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.edges)

    def triples(self) -> list[tuple[str, str, str]]:
        """``(head label, relation, tail label)`` per fact."""
        return self.graph.fact_triples(self.edges)

    def keys(self) -> list[tuple[str, str, str]]:
        """``(head key, relation, tail key)`` per fact."""
        graph = self.graph
        return [(graph.entities[h], graph.relations[r], graph.entities[t]) for h, r, t in graph.triples[self.edges]]

    def sentences(self) -> list[str]:
        """One verbalized sentence per fact."""
        return self.graph.verbalize(self.edges)

    def text(self, separator: str = "; ") -> str:
        """The facts verbalized and joined: ``"dog is a kind of canine; dog has member ..."``."""
        return separator.join(self.sentences())

    def to_json(self) -> dict:
        """A JSON-ready description: mentions, and per fact its keys, labels, text and score."""
        return {
            "mentions": [{"text": m.text, "start": m.start, "end": m.end, "entity": m.key} for m in self.mentions],
            "facts": [
                {"head": h, "relation": r, "tail": t, "text": sentence, "score": round(float(score), 6)}
                for (h, r, t), sentence, score in zip(self.keys(), self.sentences(), self.scores)
            ],
        }


class Retriever:
    """k-hop retrieval around linked entities with relation filters, ranking and a fact budget."""

    def __init__(
        self,
        graph: KnowledgeGraph,
        *,
        hops: int = 2,
        relations: list[str] | None = None,
        max_facts: int = 20,
        ranking: str = "pagerank",
        embeddings: np.ndarray | None = None,
        linker: EntityLinker | None = None,
        damping: float = 0.85,
        direction: str = "both",
    ):
        if ranking not in RANKINGS:
            raise GraphError(f"ranking {ranking!r} is not one of {', '.join(RANKINGS)}")
        if ranking == "embedding" and (embeddings is None or len(embeddings) != graph.num_entities):
            raise GraphError(
                f"ranking=embedding needs one embedding per entity of {graph.name}: train them with "
                f"`tessera kg embed {graph.name}` and pass them, or use ranking=pagerank"
            )
        if direction not in DIRECTIONS:
            raise GraphError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if hops < 1 or max_facts < 0:
            raise GraphError(f"hops must be at least 1 and max_facts at least 0 (got {hops}, {max_facts})")
        self.graph = graph
        self.hops = hops
        self.relation_mask = graph.relation_mask(relations)
        self.max_facts = max_facts
        self.ranking = ranking
        self.embeddings = embeddings
        self.damping = damping
        self.direction = direction
        self._linker = linker

    @property
    def linker(self) -> EntityLinker:
        """The entity linker (built on first use: the alias index of a large graph takes a few seconds)."""
        if self._linker is None:
            self._linker = EntityLinker(self.graph)
        return self._linker

    def retrieve(self, text: str | None = None, entities: list[str] | None = None) -> Retrieval:
        """The ranked facts around the entities linked in ``text`` and/or named by key in ``entities``.

        Keys the graph does not have are ignored; with no entity at all the retrieval is empty.
        """
        mentions = self.linker.link(text) if text else []
        ids = [m.entity for m in mentions]
        ids += [i for i in (self.graph.entity_id(key) for key in entities or []) if i is not None]
        return self.retrieve_ids(np.array(list(dict.fromkeys(ids)), dtype=np.int64), mentions)

    def retrieve_ids(self, seeds: np.ndarray, mentions: list[Mention] | None = None) -> Retrieval:
        """The ranked facts around the entity ids ``seeds``."""
        seeds = np.asarray(seeds, dtype=np.int64)
        if not len(seeds) or not self.max_facts:
            return self._empty(seeds, mentions)
        nodes, edges = self.graph.k_hop(seeds, self.hops, self.relation_mask, self.direction)
        if not len(edges):
            return self._empty(seeds, mentions)
        scores = self._score(seeds, nodes, edges)
        order = np.lexsort((edges, -scores))  # best score first, ties by edge id
        order = order[_first_of_each_pair(self.graph.triples[edges[order]])][: self.max_facts]
        return Retrieval(self.graph, seeds, edges[order], scores[order], mentions or [])

    def _empty(self, seeds, mentions) -> Retrieval:
        return Retrieval(self.graph, seeds, np.empty(0, np.int64), np.empty(0), mentions or [])

    def _score(self, seeds: np.ndarray, nodes: np.ndarray, edges: np.ndarray) -> np.ndarray:
        heads, tails = self.graph.triples[edges, 0], self.graph.triples[edges, 2]
        if self.ranking == "embedding":
            return self._similarity(seeds, heads, tails)
        nodes = np.sort(nodes)
        ranks = personalized_pagerank(nodes, heads, tails, seeds, self.damping)
        return ranks[np.searchsorted(nodes, heads)] + ranks[np.searchsorted(nodes, tails)]

    def _similarity(self, seeds: np.ndarray, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
        """Per fact, the best cosine similarity between the seeds' mean embedding and a fact end that is not a
        seed (1 for a fact between two seeds)."""
        vectors = self.embeddings
        query = vectors[seeds].mean(axis=0)
        query = query / (np.linalg.norm(query) or 1.0)
        best = np.full(len(heads), -np.inf)
        for ends in (heads, tails):
            candidates = vectors[ends]
            norms = np.linalg.norm(candidates, axis=1)
            similarity = candidates @ query / np.where(norms == 0, 1.0, norms)
            best = np.maximum(best, np.where(np.isin(ends, seeds), -np.inf, similarity))
        return np.where(np.isinf(best), 1.0, best)


def _first_of_each_pair(triples: np.ndarray) -> np.ndarray:
    """Positions of ``triples`` to keep so that a fact and its reverse (``b r a`` after ``a r b``, as symmetric
    relations such as antonym or similar-to store them) appear once: the first of the two is kept."""
    low, high = np.minimum(triples[:, 0], triples[:, 2]), np.maximum(triples[:, 0], triples[:, 2])
    _, first = np.unique(np.stack([low, triples[:, 1], high], axis=1), axis=0, return_index=True)
    return np.sort(first)


def personalized_pagerank(
    nodes: np.ndarray,
    heads: np.ndarray,
    tails: np.ndarray,
    seeds: np.ndarray,
    damping: float = 0.85,
    iterations: int = 30,
) -> np.ndarray:
    """PageRank of the undirected subgraph ``heads[i] -- tails[i]`` over sorted ``nodes``, restarting at ``seeds``.

    Power iteration as a scatter-add over the edge list (``np.bincount``): on the few hundred edges of a retrieved
    neighbourhood this is far cheaper than building sparse matrices. Returns one rank per node (they sum to 1).
    """
    size = len(nodes)
    sources = np.searchsorted(nodes, np.concatenate([heads, tails]))
    targets = np.searchsorted(nodes, np.concatenate([tails, heads]))
    degree = np.bincount(sources, minlength=size).astype(float)
    share = 1.0 / degree[sources]
    restart = np.zeros(size)
    restart[np.searchsorted(nodes, seeds)] = 1.0 / len(seeds)
    rank = restart.copy()
    for _ in range(iterations):
        rank = damping * np.bincount(targets, weights=rank[sources] * share, minlength=size) + (1 - damping) * restart
    return rank / rank.sum()
