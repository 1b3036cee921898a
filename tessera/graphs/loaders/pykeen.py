"""The PyKEEN link-prediction benchmarks with their splits: ``pykeen:nations``, ``pykeen:umls``, ``pykeen:kinships``."""

from __future__ import annotations

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.store import PARSE_BYTES_PER_TRIPLE, GraphError, KnowledgeGraph, check_memory

DATASETS = ("nations", "umls", "kinships")
SPLITS = ("train", "valid", "test")


def read_tsv_triples(path) -> list[tuple[str, str, str]]:
    """``(head, relation, tail)`` rows of a tab-separated file; a malformed row raises with file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise GraphError(f"{path} line {number}: expected head<TAB>relation<TAB>tail, got {len(parts)} fields")
            rows.append((parts[0], parts[1], parts[2]))
    return rows


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
        rows = [row for split in SPLITS for row in parts[split]]
        check_memory(len(rows), len(rows), f"pykeen:{self.argument}", PARSE_BYTES_PER_TRIPLE)
        starts, splits = 0, {}
        for split in SPLITS:
            splits[split] = list(range(starts, starts + len(parts[split])))
            starts += len(parts[split])
        entities = {key for h, _, t in rows for key in (h, t)}
        return KnowledgeGraph.from_triples(
            self.argument,
            rows,
            labels={key: key.replace("_", " ") for key in entities},
            aliases=[(key.replace("_", " "), key, 1.0) for key in sorted(entities)],
            splits=splits,
        )
