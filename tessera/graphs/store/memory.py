"""The memory budget of a knowledge graph: what the store and parsing cost, and the check that refuses a graph whose
estimated cost exceeds the memory available (or ``$TESSERA_KG_MEMORY_BYTES``) before anything is allocated."""

from __future__ import annotations

import os
from pathlib import Path

from tessera.graphs.store.errors import GraphTooLargeError

#: Store cost per triple: 12 bytes of triple ids plus 2 x 9 bytes of CSR (neighbour, edge id and direction flag,
#: once from each end).
BYTES_PER_TRIPLE = 30
#: Store cost per entity: its key, label and id-map entry as Python strings and dict slots (measured average).
BYTES_PER_ENTITY = 260
#: Peak memory per triple of building a graph from Python objects (measured: WordNet through NLTK 1,890 bytes,
#: GO's SQLite rows 1,000): what the loaders check before they parse.
PARSE_BYTES_PER_TRIPLE = 2000
MEMORY_ENV = "TESSERA_KG_MEMORY_BYTES"


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
