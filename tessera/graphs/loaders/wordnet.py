"""WordNet 3.0 as a knowledge graph: ``wordnet``.

Entities are the 117,659 synsets (key ``dog.n.01``, label the first lemma, aliases every lemma, with spaces).
Relations are taken at the synset level; the lemma-level ones (antonym, derivation) are lifted to the synsets of
their lemmas. An alias's prior is the sense's SemCor tag count (``cntlist.rev``, present when the asset was built
with apt) plus ``1 / sense rank`` among the senses of that lemma and part of speech, so linking picks the most
frequent sense ("make" -> make.v.01, not the noun "brand").
"""

from __future__ import annotations

import numpy as np

from tessera.graphs.loaders import GraphLoader, asset_fingerprint
from tessera.graphs.store import PARSE_BYTES_PER_TRIPLE, KnowledgeGraph, check_memory

#: Synset-level relations: key -> (phrase, NLTK Synset method).
SYNSET_RELATIONS = {
    "hypernym": ("is a kind of", "hypernyms"),
    "instance_hypernym": ("is an instance of", "instance_hypernyms"),
    "part_meronym": ("has part", "part_meronyms"),
    "member_meronym": ("has member", "member_meronyms"),
    "substance_meronym": ("contains the substance", "substance_meronyms"),
    "similar_to": ("is similar to", "similar_tos"),
    "entailment": ("entails", "entailments"),
    "cause": ("causes", "causes"),
    "attribute": ("is expressed by", "attributes"),
    "also_see": ("see also", "also_sees"),
    "verb_group": ("is like", "verb_groups"),
}
#: Lemma-level relations lifted to synsets: key -> (phrase, NLTK Lemma method).
LEMMA_RELATIONS = {
    "antonym": ("is the opposite of", "antonyms"),
    "derivation": ("is related in form to", "derivationally_related_forms"),
}
#: WordNet holds about this many synsets and relation edges: the memory check runs before parsing.
_EXPECTED_SYNSETS, _EXPECTED_EDGES = 117_659, 290_000


class WordNetLoader(GraphLoader):
    """WordNet 3.0 synsets and their relations from the packaged ``wordnet`` asset (through NLTK)."""

    name = "wordnet"
    summary = "WordNet 3.0: 117,659 synsets, lemmas as aliases, hypernym/meronym/antonym/similar-to/derivation..."

    def fingerprint(self) -> str:
        return asset_fingerprint("wordnet")

    def load(self) -> KnowledgeGraph:
        from tessera.graphs.wordnet import wordnet

        check_memory(_EXPECTED_EDGES, _EXPECTED_SYNSETS, "parsing WordNet 3.0", PARSE_BYTES_PER_TRIPLE)
        wn = wordnet()
        synsets = list(wn.all_synsets())
        index = {synset: i for i, synset in enumerate(synsets)}
        relation_keys = [*SYNSET_RELATIONS, *LEMMA_RELATIONS]
        edges: set[tuple[int, int, int]] = set()
        for head, synset in enumerate(synsets):
            for relation, (_, method) in enumerate(SYNSET_RELATIONS.values()):
                edges.update((head, relation, index[other]) for other in getattr(synset, method)())
            for offset, (_, method) in enumerate(LEMMA_RELATIONS.values(), len(SYNSET_RELATIONS)):
                for lemma in synset.lemmas():
                    edges.update((head, offset, index[other.synset()]) for other in getattr(lemma, method)())
        triples = np.array(sorted(edges), dtype=np.int32)
        names, entities, priors = _aliases(wn, synsets)
        return KnowledgeGraph(
            "wordnet",
            [synset.name() for synset in synsets],
            relation_keys,
            triples,
            labels=[synset.lemmas()[0].name().replace("_", " ") for synset in synsets],
            relation_labels=[phrase for phrase, _ in [*SYNSET_RELATIONS.values(), *LEMMA_RELATIONS.values()]],
            aliases=(names, np.array(entities, dtype=np.int32), np.array(priors, dtype=np.float32)),
        )


def _aliases(wn, synsets) -> tuple[list[str], list[int], list[float]]:
    """Every lemma of every synset with prior ``tag count + 1 / sense rank`` (see the module docstring)."""
    # NLTK keeps the index files' sense order (most frequent first) only in this map: lemma -> pos -> offsets.
    senses = wn._lemma_pos_offset_map
    counts = _sense_counts(wn)
    names, entities, priors = [], [], []
    for entity, synset in enumerate(synsets):
        for lemma in synset.lemmas():
            offsets = senses.get(lemma.name().lower(), {}).get(synset.pos(), [])
            rank = offsets.index(synset.offset()) + 1 if synset.offset() in offsets else len(offsets) + 1
            names.append(lemma.name().replace("_", " "))
            entities.append(entity)
            priors.append(counts.get(lemma.key(), 0) + 1.0 / rank)
    return names, entities, priors


def _sense_counts(wn) -> dict[str, int]:
    """``{sense key: SemCor tag count}`` from ``cntlist.rev`` (read whole: NLTK's per-lemma lookup takes a minute),
    empty when the asset has no counts."""
    try:
        handle = wn.open("cntlist.rev")
    except OSError:
        return {}
    with handle:
        return {key: int(count) for key, _, count in (line.split() for line in handle if line.strip())}
