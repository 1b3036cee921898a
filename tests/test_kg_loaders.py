"""Graph sources: the loader hook (built-ins and a third-party plugin), the binary cache, and the real graphs."""

import json
import os
from pathlib import Path

import pytest

from conftest import make_plugin, plugins, tessera
from tessera.core.assets import MANIFEST, tessera_home
from tessera.graphs.loaders import cache_dir, load_graph, resolve
from tessera.graphs.loaders.pykeen import read_tsv_triples
from tessera.graphs.store import GraphError, KnowledgeGraph

REAL_HOME = tessera_home()

THIRD_PARTY_LOADER = """
from tessera import hookimpl
from tessera.graphs.loaders import GraphLoader
from tessera.graphs.store import KnowledgeGraph

class Chain(GraphLoader):
    name = "chain"
    summary = "a chain of N nodes"
    argument_help = "length"

    def fingerprint(self):
        return self.argument

    def load(self):
        n = int(self.argument)
        return KnowledgeGraph.from_triples("chain", [(f"n{i}", "next", f"n{i + 1}") for i in range(n)])

@hookimpl
def tessera_kg_loaders():
    return [Chain]
"""


def need_asset(name: str) -> None:
    if not (REAL_HOME / "assets" / name / MANIFEST).is_file():
        pytest.skip(f"asset {name!r} is not fetched: run `tessera assets fetch {name}`")


def test_builtin_loaders_register_through_the_hook():
    assert {"rdf", "wordnet", "pykeen", "go", "commonsense"} <= set(plugins().registry.names("kg_loader"))
    assert plugins().provider("kg_loader", "wordnet") == "tessera.kg_loaders"


def test_loaders_are_checked_at_start_up_listed_and_filtered_like_techniques(tmp_path):
    make_plugin(tmp_path / "site", "chain", THIRD_PARTY_LOADER)
    make_plugin(
        tmp_path / "site",
        "notaloader",
        """
from tessera import hookimpl

@hookimpl
def tessera_kg_loaders():
    return [dict]
""",
    )
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = tessera("plugins", "--json", env=env)
    report = json.loads(result.stdout)
    assert "chain" in report["techniques"]["kg_loader"] and report["providers"]["kg_loader/chain"] == "chain"
    assert [f["name"] for f in report["failed"]] == ["notaloader"]
    assert "not a subclass of tessera.graphs.loaders.GraphLoader" in report["failed"][0]["error"]
    blocked = tessera("kg", "info", "chain:3", env={**env, "TESSERA_PLUGINS_BLOCK": "chain"})
    assert blocked.returncode == 2 and "unknown graph source 'chain:3'" in blocked.stderr


def test_sources_resolve_or_explain(tmp_path):
    assert resolve("pykeen:umls", plugins()).argument == "umls"
    ttl = tmp_path / "g.ttl"
    ttl.write_text("<http://a> <http://b> <http://c> .\n")
    assert resolve(str(ttl), plugins()).name == "rdf" and resolve(f"rdf:{ttl}", plugins()).path == ttl
    with pytest.raises(GraphError, match="unknown graph source 'dbpedia': choose one of commonsense, go, pykeen, rdf"):
        resolve("dbpedia", plugins())
    with pytest.raises(GraphError, match="unknown PyKEEN dataset 'fb15k'"):
        resolve("pykeen:fb15k", plugins())
    with pytest.raises(GraphError, match="graph source pykeen needs an argument"):
        resolve("pykeen", plugins())
    with pytest.raises(GraphError, match="graph source wordnet takes no argument"):
        resolve("wordnet:3.1", plugins())


def test_rdf_source_is_cached_and_reparsed_when_the_file_changes(tmp_path, private_cache):
    ttl = tmp_path / "g.ttl"
    ttl.write_text("<http://a> <http://b> <http://c> .\n")
    graph = load_graph(f"rdf:{ttl}", plugins())
    directory = cache_dir(resolve(f"rdf:{ttl}", plugins()))
    assert graph.num_triples == 1 and KnowledgeGraph.cached_meta(directory)["triples"] == 1
    assert directory.parent == private_cache / "kg"
    assert load_graph(f"rdf:{ttl}", plugins()) is graph  # once per process
    ttl.write_text("<http://a> <http://b> <http://c> .\n<http://c> <http://b> <http://d> .\n")
    os.utime(ttl, ns=(1, 1))
    assert cache_dir(resolve(f"rdf:{ttl}", plugins())) != directory
    assert load_graph(f"rdf:{ttl}", plugins()).num_triples == 2
    assert load_graph(f"rdf:{ttl}", plugins(), cache=False).num_triples == 2


def test_tsv_rows_are_checked(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a\tr\tb\n\nc\tr\n")
    with pytest.raises(GraphError, match=r"train.txt line 3: expected head<TAB>relation<TAB>tail, got 2 fields"):
        read_tsv_triples(path)


def test_pykeen_nations_with_splits_through_a_fresh_cache(private_cache):
    need_asset("pykeen")
    graph = load_graph("pykeen:nations", plugins())
    assert (graph.num_entities, graph.num_relations, graph.num_triples) == (14, 55, 1992)
    assert {name: len(i) for name, i in graph.splits.items()} == {"train": 1592, "valid": 199, "test": 201}
    reloaded = KnowledgeGraph.load(cache_dir(resolve("pykeen:nations", plugins())))
    assert reloaded.split("test").tolist() == graph.split("test").tolist()
    assert graph.labels[graph.entity_id("usa")] == "usa"


@pytest.mark.parametrize(
    "source, entities, triples",
    [("commonsense", 3891, 9215), ("go", 43559, 85716), ("pykeen:umls", 135, 6529), ("pykeen:kinships", 104, 10686)],
)
def test_real_graph_sizes(source, entities, triples):
    need_asset(source.partition(":")[0])
    graph = load_graph(source, plugins())
    assert (graph.num_entities, graph.num_triples) == (entities, triples)


def test_gene_ontology_terms_synonyms_and_relations():
    need_asset("go")
    graph = load_graph("go", plugins())
    assert set(graph.relations) == {"is_a", "part_of", "regulates", "positively_regulates", "negatively_regulates"}
    reproduction = graph.entity_id("GO:0000003")
    assert graph.labels[reproduction] == "reproduction"
    assert "mitochondrial inheritance" in graph.alias_names  # a synonym of GO:0000001
    parents = {graph.entities[t] for h, r, t in graph.triples.tolist() if h == graph.entity_id("GO:0000001")}
    assert "GO:0048308" in parents  # mitochondrion inheritance is_a organelle inheritance


@pytest.mark.slow
def test_wordnet_graph():
    need_asset("wordnet")
    graph = load_graph("wordnet", plugins())  # 30 s the first time, then read from the cache
    assert graph.num_entities == 117_659 and graph.num_triples > 200_000
    dog = graph.entity_id("dog.n.01")
    assert graph.labels[dog] == "dog"
    assert {"dog", "domestic dog", "Canis familiaris"} <= {
        name for name, entity in zip(graph.alias_names, graph.alias_entities) if entity == dog
    }
    facts = set(graph.fact_triples(graph.k_hop([dog], 1)[1]))
    assert ("dog", "hypernym", "canine") in facts and ("dog", "hypernym", "domestic animal") in facts
    good, bad = graph.entity_id("good.a.01"), graph.entity_id("bad.a.01")
    assert any(h == good and t == bad and graph.relations[r] == "antonym" for h, r, t in graph.triples.tolist())


@pytest.mark.slow
def test_wn18rr_split_of_wordnet():
    need_asset("wordnet")
    graph = load_graph("wn18rr", plugins())  # built from the cached wordnet graph
    assert (graph.num_entities, graph.num_triples) == (113_345, 169_783)
    assert {name: len(indices) for name, indices in graph.splits.items()} == {
        "train": 159_783,
        "valid": 5000,
        "test": 5000,
    }
    keys = {tuple(row) for row in graph.triples.tolist()}
    assert not any((t, r, h) in keys for h, r, t in keys if h != t)  # one direction of each symmetric fact
    assert load_graph("wn18rr:mirrored", plugins()).num_triples == 218_847
    with pytest.raises(GraphError, match="unknown wn18rr variant 'mirror': use wn18rr or wn18rr:mirrored"):
        resolve("wn18rr:mirror", plugins())


def test_third_party_loader_plugin_on_the_command_line(tmp_path):
    make_plugin(tmp_path / "site", "chain", THIRD_PARTY_LOADER)
    env = {"PYTHONPATH": str(tmp_path / "site"), "TESSERA_HOME": str(tmp_path / "home")}
    result = tessera("kg", "info", "--json", env=env)
    assert result.returncode == 0, result.stderr
    loaders = json.loads(result.stdout)["loaders"]
    assert {"name": "chain", "summary": "a chain of N nodes", "argument": "length"} in loaders
    result = tessera("kg", "info", "chain:5", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["triples"] == 5
    result = tessera("kg", "query", "chain:5", "--entity", "n0", "--hops", "2", "--json", env=env)
    facts = [(f["head"], f["tail"]) for f in json.loads(result.stdout)["facts"]]
    assert sorted(facts) == [("n0", "n1"), ("n1", "n2")]
    assert Path(tmp_path / "home" / "kg").is_dir()


def test_loaders_refuse_a_graph_too_large_before_parsing(monkeypatch):
    need_asset("pykeen")
    from tessera.graphs.store import MEMORY_ENV, PARSE_BYTES_PER_TRIPLE, GraphTooLargeError

    monkeypatch.setenv(MEMORY_ENV, "100000")
    with pytest.raises(GraphTooLargeError, match=f"pykeen:umls: about 6,529 triples x {PARSE_BYTES_PER_TRIPLE} bytes"):
        load_graph("pykeen:umls", plugins(), cache=False)
    with pytest.raises(GraphTooLargeError, match="parsing WordNet 3.0"):
        load_graph("wordnet", plugins(), cache=False)
