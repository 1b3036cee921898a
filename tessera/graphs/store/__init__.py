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

The modules: :mod:`.graph` (:class:`KnowledgeGraph`), :mod:`.traversal` (the CSR adjacency, k-hop neighbourhoods),
:mod:`.persistence` (save / load, :data:`STORE_FORMAT`), :mod:`.memory` (the budget) and :mod:`.errors`; the names
below are the API the rest of tessera imports.
"""

from tessera.graphs.store.errors import GraphError, GraphTooLargeError
from tessera.graphs.store.graph import KnowledgeGraph
from tessera.graphs.store.memory import (
    BYTES_PER_ENTITY,
    BYTES_PER_TRIPLE,
    MEMORY_ENV,
    PARSE_BYTES_PER_TRIPLE,
    available_memory,
    check_memory,
)
from tessera.graphs.store.persistence import STORE_FORMAT
from tessera.graphs.store.traversal import Adjacency

__all__ = [
    "BYTES_PER_ENTITY",
    "BYTES_PER_TRIPLE",
    "MEMORY_ENV",
    "PARSE_BYTES_PER_TRIPLE",
    "STORE_FORMAT",
    "Adjacency",
    "GraphError",
    "GraphTooLargeError",
    "KnowledgeGraph",
    "available_memory",
    "check_memory",
]
