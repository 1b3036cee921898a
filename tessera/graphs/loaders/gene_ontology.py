"""The Gene Ontology from Bioconductor's ``GO.sqlite`` (43,559 terms, 85,716 parent edges): ``go``."""

from __future__ import annotations

import numpy as np

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.store import PARSE_BYTES_PER_TRIPLE, GraphError, KnowledgeGraph, check_memory

#: The ``relationship_type`` values of the parent tables -> (relation key, phrase).
RELATIONS = {
    "isa": ("is_a", "is a"),
    "part of": ("part_of", "is part of"),
    "regulates": ("regulates", "regulates"),
    "positively regulates": ("positively_regulates", "positively regulates"),
    "negatively regulates": ("negatively_regulates", "negatively regulates"),
}
#: Prior of a synonym against the term's own name when linking.
SYNONYM_PRIOR = 0.5


class GeneOntologyLoader(GraphLoader):
    """GO terms (key ``GO:0008150``, label the term name, synonyms as aliases) and their child -> parent edges."""

    name = "go"
    summary = "Gene Ontology (GO.sqlite, release 2022-07): 43,559 terms, 85,716 is_a/part_of/regulates edges"

    def fingerprint(self) -> str:
        return asset_fingerprint("go")

    def load(self) -> KnowledgeGraph:
        import sqlite3

        from tessera.core.assets import asset_path

        path = asset_path("go") / "GO.sqlite"
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            terms = connection.execute("SELECT _id, go_id, term FROM go_term ORDER BY _id").fetchall()
            parents = [
                row
                for part in ("bp", "cc", "mf")
                for row in connection.execute(f"SELECT _id, relationship_type, _parent_id FROM go_{part}_parents")
            ]
            synonyms = connection.execute("SELECT _id, synonym FROM go_synonym WHERE like_go_id = 0").fetchall()
        finally:
            connection.close()
        check_memory(len(parents), len(terms), f"parsing {path}", PARSE_BYTES_PER_TRIPLE)
        unknown = sorted({kind for _, kind, _ in parents} - set(RELATIONS))
        if unknown:
            raise GraphError(f"{path} has relationship types {unknown} that tessera does not know: update the loader")
        index = {row_id: i for i, (row_id, _, _) in enumerate(terms)}
        kinds = {kind: i for i, kind in enumerate(RELATIONS)}
        triples = np.array(
            [(index[child], kinds[kind], index[parent]) for child, kind, parent in parents], dtype=np.int32
        )
        alias_rows = [(term, i, 1.0) for i, (_, _, term) in enumerate(terms)]
        alias_rows += [(synonym, index[row_id], SYNONYM_PRIOR) for row_id, synonym in synonyms if row_id in index]
        return KnowledgeGraph(
            "go",
            [go_id for _, go_id, _ in terms],
            [key for key, _ in RELATIONS.values()],
            triples,
            labels=[term for _, _, term in terms],
            relation_labels=[phrase for _, phrase in RELATIONS.values()],
            aliases=(
                [a for a, _, _ in alias_rows],
                np.array([e for _, e, _ in alias_rows], dtype=np.int32),
                np.array([p for _, _, p in alias_rows], dtype=np.float32),
            ),
        )
