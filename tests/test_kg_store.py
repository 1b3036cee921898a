"""The knowledge-graph store: ids, CSR k-hop expansion (checked against networkx), the binary cache, memory refusal."""

import networkx as nx
import numpy as np
import pytest

from tessera.graphs.store import (
    BYTES_PER_TRIPLE,
    MEMORY_ENV,
    STORE_FORMAT,
    GraphError,
    GraphTooLargeError,
    KnowledgeGraph,
    check_memory,
)


def random_graph(entities=60, triples=150, relations=4, seed=0) -> KnowledgeGraph:
    rng = np.random.default_rng(seed)
    rows = [
        (f"e{rng.integers(entities)}", f"r{rng.integers(relations)}", f"e{rng.integers(entities)}")
        for _ in range(triples)
    ]
    return KnowledgeGraph.from_triples("random", rows)


@pytest.fixture
def family() -> KnowledgeGraph:
    triples = [
        ("ann", "parent_of", "bob"),
        ("bob", "parent_of", "cid"),
        ("cid", "parent_of", "dee"),
        ("ann", "likes", "cid"),
        ("eve", "likes", "ann"),
    ]
    return KnowledgeGraph.from_triples(
        "family",
        triples,
        labels={"ann": "Ann", "bob": "Bob"},
        relation_labels={"parent_of": "is the parent of"},
        aliases=[("Ann", "ann", 1.0), ("Annie", "ann", 0.5), ("Fay", "fay", 1.0)],
        splits={"train": [0, 1, 2], "test": [3, 4]},
    )


def test_ids_labels_and_lookup(family):
    assert family.entities == ["ann", "bob", "cid", "dee", "eve", "fay"]  # fay only has an alias
    assert family.relations == ["parent_of", "likes"]
    assert family.triples.dtype == np.int32 and family.triples.shape == (5, 3)
    assert family.labels[:3] == ["Ann", "Bob", "cid"] and family.relation_labels == ["is the parent of", "likes"]
    assert family.entity_id("dee") == 3 and family.entity_id("zed") is None
    assert family.relation_id("likes") == 1
    with pytest.raises(GraphError, match="has no relation 'hates': its relations are parent_of, likes"):
        family.relation_id("hates")
    assert family.degree.tolist() == [3, 2, 3, 1, 1, 0]
    assert family.verbalize([0, 3]) == ["Ann is the parent of Bob", "Ann likes cid"]
    assert family.fact_triples([4]) == [("eve", "likes", "Ann")]
    assert family.split("test").tolist() == family.triples[[3, 4]].tolist()
    with pytest.raises(GraphError, match="has no split 'valid'"):
        family.split("valid")


def test_k_hop_directions_and_relation_filter(family):
    ann = family.entity_id("ann")
    nodes, edges = family.k_hop([ann], hops=1)
    assert sorted(family.entities[n] for n in nodes) == ["ann", "bob", "cid", "eve"] and sorted(edges) == [0, 3, 4]
    assert nodes[0] == ann  # seeds first
    nodes, edges = family.k_hop([ann], hops=2, direction="out")
    assert sorted(family.entities[n] for n in nodes) == ["ann", "bob", "cid", "dee"]
    nodes, _ = family.k_hop([ann], hops=2, direction="in")
    assert sorted(family.entities[n] for n in nodes) == ["ann", "eve"]
    mask = family.relation_mask(["parent_of"])
    nodes, edges = family.k_hop([ann], hops=3, relation_mask=mask)
    assert sorted(family.entities[n] for n in nodes) == ["ann", "bob", "cid", "dee"] and sorted(edges) == [0, 1, 2]
    assert family.relation_mask([]) is None
    with pytest.raises(GraphError, match="direction 'up'"):
        family.k_hop([ann], direction="up")


@pytest.mark.parametrize("seed", range(4))
def test_k_hop_matches_networkx_ego_graph(seed):
    graph = random_graph(seed=seed)
    view = graph.undirected_view
    rng = np.random.default_rng(seed)
    for hops in (1, 2, 3):
        for _ in range(10):
            seeds = rng.choice(graph.num_entities, size=rng.integers(1, 40), replace=False)
            nodes, edges = graph.k_hop(seeds, hops)
            expected = set().union(*(nx.ego_graph(view, int(s), radius=hops).nodes for s in seeds))
            assert set(nodes.tolist()) == expected and len(nodes) == len(set(nodes.tolist()))
            assert len(edges) == len(set(edges.tolist()))
            # an edge is traversed exactly when one end is within hops - 1 of a seed
            inner = set().union(*(nx.ego_graph(view, int(s), radius=hops - 1).nodes for s in seeds))
            expected_edges = {i for i, (h, _, t) in enumerate(graph.triples.tolist()) if h in inner or t in inner}
            assert set(edges.tolist()) == expected_edges


def test_networkx_views_answer_graph_algorithms(family):
    directed = family.directed_view
    assert directed.number_of_edges() == family.num_triples and directed.number_of_nodes() == family.num_entities
    path = nx.shortest_path(directed, family.entity_id("ann"), family.entity_id("dee"))
    assert [family.entities[n] for n in path] == ["ann", "cid", "dee"]
    ranks = nx.pagerank(directed)
    assert abs(sum(ranks.values()) - 1) < 1e-6
    assert nx.number_connected_components(family.undirected_view) == 2  # fay stands alone
    assert family.undirected_view is family.undirected_view  # built once


def test_binary_cache_round_trip(family, tmp_path):
    family.save(tmp_path / "g", source={"source": "test"})
    meta = KnowledgeGraph.cached_meta(tmp_path / "g")
    assert meta["format"] == STORE_FORMAT and meta["triples"] == 5 and meta["source"] == {"source": "test"}
    loaded = KnowledgeGraph.load(tmp_path / "g")
    assert loaded.name == "family" and loaded.entities == family.entities and loaded.labels == family.labels
    assert loaded.relation_labels == family.relation_labels and loaded.alias_names == family.alias_names
    assert np.array_equal(loaded.triples, family.triples)
    assert np.array_equal(loaded.alias_priors, family.alias_priors)
    assert {k: v.tolist() for k, v in loaded.splits.items()} == {"train": [0, 1, 2], "test": [3, 4]}
    for part in ("indptr", "neighbors", "edges", "forward"):
        assert np.array_equal(getattr(loaded.adjacency, part), getattr(family.adjacency, part))
    assert sorted(loaded.k_hop([0], 2)[0].tolist()) == sorted(family.k_hop([0], 2)[0].tolist())


def test_stale_or_partial_cache_is_not_read(family, tmp_path):
    assert KnowledgeGraph.cached_meta(tmp_path / "missing") is None
    family.save(tmp_path / "g")
    (tmp_path / "g" / "graph.json").write_text('{"format": 0}')
    assert KnowledgeGraph.cached_meta(tmp_path / "g") is None
    with pytest.raises(GraphError, match="holds no cached graph"):
        KnowledgeGraph.load(tmp_path / "g")


def test_too_large_is_refused_before_allocation(family, tmp_path, monkeypatch):
    family.save(tmp_path / "g")
    monkeypatch.setenv(MEMORY_ENV, "1000")
    with pytest.raises(GraphTooLargeError) as caught:
        KnowledgeGraph.load(tmp_path / "g")
    message = str(caught.value)
    assert f"5 triples x {BYTES_PER_TRIPLE} bytes" in message and "more than the 0.00 GB available" in message
    assert MEMORY_ENV in message
    check_memory(10, 1, "small")  # 10 * 30 + 260 bytes fit in 1000
    with pytest.raises(GraphTooLargeError, match="about 10 triples x 2000 bytes"):
        check_memory(10, 0, "parse", bytes_per_triple=2000)


def test_inconsistent_graph_is_refused():
    with pytest.raises(GraphError, match="entity id outside"):
        KnowledgeGraph("bad", ["a"], ["r"], np.array([[0, 0, 1]]))
    with pytest.raises(GraphError, match="relation id outside"):
        KnowledgeGraph("bad", ["a", "b"], ["r"], np.array([[0, 1, 1]]))
