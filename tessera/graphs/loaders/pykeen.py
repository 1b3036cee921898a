"""The PyKEEN link-prediction benchmarks with their splits: ``pykeen:nations``, ``pykeen:umls``, ``pykeen:kinships``."""

from __future__ import annotations

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.loaders.tsv import SPLITS, graph_from_splits, read_tsv_triples
from tessera.graphs.store import PARSE_BYTES_PER_TRIPLE, GraphError, KnowledgeGraph, check_memory

DATASETS = ("nations", "umls", "kinships")
__all__ = ["DATASETS", "PyKEENLoader", "read_tsv_triples"]


class PyKEENLoader(GraphLoader):
    """Nations, UMLS or Kinships from the packaged ``pykeen`` asset, with train / valid / test splits."""

    name = "pykeen"
    summary = "PyKEEN benchmark triples with train/valid/test splits: pykeen:nations | pykeen:umls | pykeen:kinships"
    argument_help = "nations, umls or kinships"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        if self.argument not in DATASETS:
            raise GraphError(f"unknown PyKEEN dataset {self.argument!r}: choose one of {', '.join(DATASETS)}")

    def fingerprint(self) -> str:
        return asset_fingerprint("pykeen")

    def load(self) -> KnowledgeGraph:
        from tessera.core.assets import asset_path

        directory = asset_path("pykeen") / self.argument
        parts = {split: read_tsv_triples(directory / f"{split}.txt") for split in SPLITS}
        rows = sum(parts.values(), [])
        check_memory(len(rows), len(rows), f"pykeen:{self.argument}", PARSE_BYTES_PER_TRIPLE)
        return graph_from_splits(self.argument, parts)
