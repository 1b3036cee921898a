"""Entity linking (longest match, case folding, morphy, disambiguation) and retrieval (hops, filters, ranking,
budget, empty results)."""

import networkx as nx
import numpy as np
import pytest

from tessera.core.assets import MANIFEST, tessera_home
from tessera.graphs.linking import EntityLinker, alias_key
from tessera.graphs.retrieval import Retriever, personalized_pagerank
from tessera.graphs.store import GraphError, KnowledgeGraph


def wordnet_fetched() -> bool:
    return (tessera_home() / "assets" / "wordnet" / MANIFEST).is_file()


needs_wordnet = pytest.mark.skipif(not wordnet_fetched(), reason="asset 'wordnet' is not fetched")


@pytest.fixture(scope="module")
def zoo() -> KnowledgeGraph:
    triples = [
        ("dog", "is_a", "canine"),
        ("canine", "is_a", "mammal"),
        ("hot_dog", "is_a", "sausage"),
        ("sausage", "is_a", "food"),
        ("bank_river", "part_of", "river"),
        ("bank_money", "is_a", "institution"),
        ("bank_money", "related_to", "money"),
        ("institution", "related_to", "money"),
        ("money", "related_to", "bank_money"),
        ("run", "is_a", "action"),
        ("goose", "is_a", "bird"),
    ]
    aliases = [
        ("Dog", "dog", 1.0),
        ("hot dog", "hot_dog", 1.0),
        ("bank", "bank_river", 0.9),
        ("bank", "bank_money", 0.2),
        ("canine", "canine", 1.0),
        ("run", "run", 1.0),
        ("goose", "goose", 1.0),
        ("The Who", "canine", 1.0),
        ("a", "mammal", 1.0),
        ("bird", "bird", 1.0),
    ]
    return KnowledgeGraph.from_triples("zoo", triples, aliases=aliases)


def keys(linker: EntityLinker, text: str) -> list[tuple[str, str]]:
    return [(m.text, m.key) for m in linker.link(text)]


def test_alias_key_folds_case_and_spacing():
    assert alias_key("  Hot   DOG's ") == "hot dog's" and alias_key("Straße") == "strasse"


def test_longest_match_case_folding_and_spans(zoo):
    linker = EntityLinker(zoo, lemmatize=False)
    text = "My HOT DOG and my dog, not a canine!"
    mentions = linker.link(text)
    assert [(m.text, m.key) for m in mentions] == [("HOT DOG", "hot_dog"), ("dog", "dog"), ("canine", "canine")]
    assert all(text[m.start : m.end] == m.text for m in mentions)
    assert keys(linker, "the who sang") == [("the who", "canine")]  # a multi-word alias may start with a stop word
    assert keys(linker, "a") == []  # a single stop word is never linked
    assert keys(linker, "") == [] and keys(linker, "nothing known here") == []


def test_disambiguation_by_prior_or_degree(zoo):
    by_prior = EntityLinker(zoo, lemmatize=False, disambiguation="prior")
    by_degree = EntityLinker(zoo, lemmatize=False, disambiguation="degree")
    assert keys(by_prior, "the bank") == [("bank", "bank_river")]
    assert keys(by_degree, "the bank") == [("bank", "bank_money")]  # 3 facts against 1
    (mention,) = by_prior.link("bank")
    assert [zoo.entities[c] for c in mention.candidates] == ["bank_river", "bank_money"]
    with pytest.raises(GraphError, match="disambiguation 'random' is not one of prior, degree"):
        EntityLinker(zoo, disambiguation="random")


@needs_wordnet
def test_lemmatization_with_morphy(zoo):
    linker = EntityLinker(zoo)
    assert keys(linker, "two hot dogs and dogs") == [("hot dogs", "hot_dog"), ("dogs", "dog")]
    assert keys(EntityLinker(zoo, lemmatize=False), "dogs") == []
    irregular = keys(linker, "running geese")
    if not linker.lemmas("running"):
        pytest.skip("the wordnet asset has empty exception lists (built without apt)")
    assert irregular == [("running", "run"), ("geese", "goose")]


def test_retrieval_hops_filters_and_budget(zoo):
    retriever = Retriever(zoo, hops=2, max_facts=10, linker=EntityLinker(zoo, lemmatize=False))
    result = retriever.retrieve("a hot dog")
    assert [m.key for m in result.mentions] == ["hot_dog"]
    assert sorted(result.keys()) == [("hot_dog", "is_a", "sausage"), ("sausage", "is_a", "food")]
    assert result.text() == "hot_dog is a sausage; sausage is a food"
    assert result.triples()[0] == ("hot_dog", "is_a", "sausage")  # the fact touching the mention ranks first
    one_hop = Retriever(zoo, hops=1, linker=retriever.linker).retrieve("hot dog")
    assert one_hop.keys() == [("hot_dog", "is_a", "sausage")]
    filtered = Retriever(zoo, hops=3, relations=["related_to"], linker=retriever.linker)
    assert {r for _, r, _ in filtered.retrieve(entities=["bank_money"]).keys()} == {"related_to"}
    budget = Retriever(zoo, hops=3, max_facts=2, linker=retriever.linker).retrieve(entities=["dog"])
    assert len(budget) == 2 and list(budget.scores) == sorted(budget.scores, reverse=True)
    with pytest.raises(GraphError, match="has no relation 'eats'"):
        Retriever(zoo, relations=["eats"])


def test_unknown_entities_give_an_empty_retrieval(zoo):
    retriever = Retriever(zoo, linker=EntityLinker(zoo, lemmatize=False))
    for result in (retriever.retrieve(entities=["unicorn"]), retriever.retrieve("zzz qqq"), retriever.retrieve("")):
        assert len(result) == 0 and result.triples() == [] and result.text() == ""
    isolated = KnowledgeGraph.from_triples("iso", [("a", "r", "b")], aliases=[("c", "c", 1.0)])
    assert len(Retriever(isolated).retrieve(entities=["c"])) == 0
    assert retriever.retrieve(entities=["unicorn", "goose"]).keys() == [("goose", "is_a", "bird")]


def test_symmetric_facts_appear_once(zoo):
    result = Retriever(zoo, hops=1).retrieve(entities=["money"])
    pairs = [frozenset((h, t)) for h, _, t in result.keys()]
    assert len(pairs) == len(set(zip(pairs, [r for _, r, _ in result.keys()])))
    assert len([p for p in pairs if p == frozenset(("money", "bank_money"))]) == 1


def test_embedding_ranking_prefers_similar_entities(zoo):
    vectors = np.zeros((zoo.num_entities, 2), dtype=np.float32)
    vectors[:, 1] = 1.0
    dog = zoo.entity_id("dog")
    vectors[dog] = vectors[zoo.entity_id("mammal")] = [1.0, 0.0]
    retriever = Retriever(zoo, hops=2, ranking="embedding", embeddings=vectors)
    assert retriever.retrieve(entities=["dog"]).keys()[0] == ("canine", "is_a", "mammal")
    with pytest.raises(GraphError, match="ranking=embedding needs one embedding per entity of zoo"):
        Retriever(zoo, ranking="embedding")


def test_personalized_pagerank_matches_networkx():
    graph = KnowledgeGraph.from_triples(
        "g", [(f"n{a}", "r", f"n{b}") for a, b in [(0, 1), (1, 2), (2, 3), (1, 3), (3, 4), (5, 4)]]
    )
    nodes, heads, tails = np.arange(6), graph.triples[:, 0], graph.triples[:, 2]
    seeds = np.array([0, 5])
    ranks = personalized_pagerank(nodes, heads, tails, seeds, iterations=200)
    expected = nx.pagerank(graph.undirected_view, alpha=0.85, personalization={0: 0.5, 5: 0.5}, tol=1e-12)
    assert np.allclose(ranks, [expected[i] for i in range(6)], atol=1e-8)
