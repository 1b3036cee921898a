"""A WN18RR-style link-prediction benchmark built from the packaged WordNet 3.0: ``wn18rr`` (or
``wn18rr:mirrored``).

WN18RR (Dettmers et al., 2018) is WN18 without the inverse relations that let a model look the answer up
(hyponym for hypernym...). tessera's ``wordnet`` graph holds no inverse relations, but its symmetric ones
(antonym, derivation, similar_to, verb_group, also_see) hold each fact twice, ``(a, r, b)`` and ``(b, r, a)``:

- ``wn18rr`` keeps one direction of each such pair (the mirror of a test triple is never in training);
- ``wn18rr:mirrored`` keeps both, as WN18RR's own files do (its published scores, RotatE's 0.476 MRR among them,
  include these mirrored facts).

Entities that take part in no triple are left out. A fixed random order (seed 0) picks :data:`HELD_OUT` test
triples, then as many validation triples, among those whose removal leaves both their entities and their relation
in the training split, so every entity and relation of valid and test is seen in train; the rest is train.
"""

from __future__ import annotations

import numpy as np

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.store import GraphError, KnowledgeGraph

#: Triples in each of the validation and the test split.
HELD_OUT = 5000
SEED = 0
VARIANTS = ("mirrored",)


class WN18RRLoader(GraphLoader):
    """WordNet split for link prediction with its symmetric duplicates removed (see the module docstring)."""

    name = "wn18rr"
    summary = (
        "WN18RR-style split of WordNet 3.0: 5,000 valid / 5,000 test, symmetric duplicates removed "
        "(wn18rr:mirrored keeps them)"
    )
    argument_help = "mirrored (keep both directions of symmetric facts, as WN18RR)"
    argument_optional = True

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        if self.argument not in (None, *VARIANTS):
            raise GraphError(f"unknown wn18rr variant {self.argument!r}: use wn18rr or wn18rr:mirrored")

    def fingerprint(self) -> str:
        return f"{asset_fingerprint('wordnet')}\0{HELD_OUT}\0{SEED}"

    def load(self) -> KnowledgeGraph:
        from tessera.graphs.loaders import load_cached
        from tessera.graphs.loaders.wordnet import WordNetLoader

        return benchmark_split(load_cached(WordNetLoader()), mirrored=self.argument == "mirrored")


def benchmark_split(graph: KnowledgeGraph, mirrored: bool = False, held_out: int = HELD_OUT, seed: int = SEED):
    """The link-prediction graph of ``graph`` (see the module docstring): splits ``train``, ``valid``, ``test``."""
    triples = np.unique(graph.triples, axis=0)
    if not mirrored:
        mirror = {tuple(row) for row in triples[:, [2, 1, 0]].tolist()}
        keep = [h <= t or (h, r, t) not in mirror for h, r, t in triples.tolist()]
        triples = triples[np.array(keep, dtype=bool)]
    used = np.unique(triples[:, [0, 2]])
    remap = np.full(graph.num_entities, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    triples = np.stack([remap[triples[:, 0]], triples[:, 1], remap[triples[:, 2]]], axis=1)
    order = np.random.default_rng(seed).permutation(len(triples))
    entity_degree = np.bincount(triples[:, [0, 2]].ravel(), minlength=len(used))
    relation_count = np.bincount(triples[:, 1], minlength=graph.num_relations)
    chosen: list[int] = []
    for index in order.tolist():
        if len(chosen) == 2 * held_out:
            break
        h, r, t = triples[index].tolist()
        needed = 2 if h == t else 1  # a self-loop counts twice in the degree
        if entity_degree[h] > needed and entity_degree[t] > needed and relation_count[r] > 1:
            entity_degree[h] -= 1
            entity_degree[t] -= 1
            relation_count[r] -= 1
            chosen.append(index)
    if len(chosen) < 2 * held_out:
        raise GraphError(f"graph {graph.name}: only {len(chosen)} triples can be held out, {2 * held_out} needed")
    held = np.zeros(len(triples), dtype=bool)
    held[chosen] = True
    splits = {"train": np.flatnonzero(~held), "valid": np.array(chosen[held_out:]), "test": np.array(chosen[:held_out])}
    keys = [graph.entities[i] for i in used]
    kept = remap[graph.alias_entities] >= 0
    return KnowledgeGraph(
        "wn18rr-mirrored" if mirrored else "wn18rr",
        keys,
        graph.relations,
        triples,
        labels=[graph.labels[i] for i in used],
        relation_labels=graph.relation_labels,
        aliases=(
            [name for name, k in zip(graph.alias_names, kept) if k],
            remap[graph.alias_entities[kept]],
            graph.alias_priors[kept],
        ),
        splits=splits,
    )
