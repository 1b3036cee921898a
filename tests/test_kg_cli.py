"""`tessera kg info | load | query | embed` on real graphs, and its one-line errors."""

import json

import pytest

from conftest import tessera
from tessera.core.assets import MANIFEST, tessera_home
from tessera.core.cli import main as tessera_main
from tessera.graphs.cli import main

REAL_HOME = tessera_home()


def need_assets(*names):
    missing = [n for n in names if not (REAL_HOME / "assets" / n / MANIFEST).is_file()]
    if missing:
        pytest.skip(f"assets {missing} are not fetched: run `tessera assets fetch {' '.join(missing)}`")


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def rdf_file(tmp_path):
    path = tmp_path / "family.ttl"
    path.write_text(
        "@prefix ex: <http://example.org/> .\n"
        "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n"
        'ex:ann ex:parentOf ex:bob ; rdfs:label "Ann" .\n'
        'ex:bob ex:parentOf ex:cid ; rdfs:label "Bob" .\n'
        "ex:cid ex:likes ex:ann .\n"
    )
    return path


def test_rdf_file_loads_exports_and_answers_queries(rdf_file, tmp_path, capsys, private_cache):
    info = run_json(capsys, "info", str(rdf_file))
    assert (info["entities"], info["relations"], info["triples"]) == (3, 2, 3)
    assert main(["load", f"rdf:{rdf_file}", "--export", str(tmp_path / "family.nt")]) == 0
    out = capsys.readouterr().out
    assert "read from the cache" in out and "wrote" in out
    assert (tmp_path / "family.nt").read_text().count("\n") == 5  # 3 facts and 2 labels
    assert main(["load", str(rdf_file), "--refresh"]) == 0 and "parsed and cached" in capsys.readouterr().out
    result = run_json(capsys, "query", str(rdf_file), "what did Ann do", "--hops", "1")
    assert result["mentions"] == [{"text": "Ann", "start": 9, "end": 12, "entity": "http://example.org/ann"}]
    assert {(f["head"], f["tail"]) for f in result["facts"]} == {
        ("http://example.org/ann", "http://example.org/bob"),
        ("http://example.org/cid", "http://example.org/ann"),
    }
    rows = run_json(
        capsys,
        "query",
        str(rdf_file),
        "--sparql",
        "SELECT ?child WHERE { <http://example.org/ann> <http://example.org/parentOf> ?child }",
    )["rows"]
    assert rows == [{"child": "http://example.org/bob"}]


def test_pykeen_sets_answer_queries(capsys):
    need_assets("pykeen")
    for dataset, entities in (("nations", 14), ("umls", 135), ("kinships", 104)):
        info = run_json(capsys, "info", f"pykeen:{dataset}")
        assert info["entities"] == entities and set(info["splits"]) == {"train", "valid", "test"}
    result = run_json(
        capsys,
        "query",
        "pykeen:nations",
        "--entity",
        "usa",
        "--entity",
        "atlantis",
        "--hops",
        "1",
        "--relation",
        "treaties",
        "--max-facts",
        "3",
    )
    assert result["unknown_entities"] == ["atlantis"] and len(result["facts"]) == 3
    assert all(f["relation"] == "treaties" and "usa" in (f["head"], f["tail"]) for f in result["facts"])


def test_gene_ontology_and_commonsense_answer_queries(capsys):
    need_assets("go", "commonsense")
    result = run_json(capsys, "query", "go", "regulation of mitochondrial DNA replication", "--hops", "1")
    assert result["mentions"][0]["entity"] == "GO:0090296"
    assert {"head": "GO:0090296", "relation": "regulates", "tail": "GO:0006264"} in [
        {k: f[k] for k in ("head", "relation", "tail")} for f in result["facts"]
    ]
    result = run_json(capsys, "query", "commonsense", "snow in winter", "--hops", "1")
    assert {m["entity"] for m in result["mentions"]} == {"snow", "winter"}
    assert any(f["text"] == "snow is part of winter" for f in result["facts"])


@pytest.mark.slow
def test_wordnet_answers_queries(capsys):
    need_assets("wordnet")
    result = run_json(capsys, "query", "wordnet", "the dogs chased the geese", "--hops", "1", "--relation", "hypernym")
    assert [m["entity"] for m in result["mentions"]] == ["dog.n.01", "chase.v.01", "goose.n.01"]
    assert "dog is a kind of canine" in [f["text"] for f in result["facts"]]


def test_embed_trains_and_reports_filtered_metrics(capsys, tmp_path):
    need_assets("pykeen")
    out = tmp_path / "nations.npz"
    result = run_json(
        capsys, "embed", "pykeen:nations", "--model", "distmult", "--dim", "16", "--epochs", "20", "--out", str(out)
    )
    assert result["embeddings"] == str(out) and out.is_file()
    assert set(result["metrics"]) == {"both", "head", "tail", "triples", "split", "seconds", "eval_batch_size"}
    assert set(result["metrics"]["both"]) == {"mr", "mrr", "hits_at_1", "hits_at_3", "hits_at_10"}
    ranked = run_json(
        capsys,
        "query",
        "pykeen:nations",
        "--entity",
        "usa",
        "--hops",
        "1",
        "--ranking",
        "embedding",
        "--embeddings",
        str(out),
        "--max-facts",
        "5",
    )
    assert len(ranked["facts"]) == 5


def test_user_errors_are_one_line(tmp_path, capsys, private_cache):
    bad = tmp_path / "bad.ttl"
    bad.write_text("@prefix ex: <http://example.org/> .\nex:a ex:b .\n")
    for argv, message in (
        (["info", str(bad)], f"error: {bad} line 2: not valid turtle RDF"),
        (["info", "dbpedia"], "error: unknown graph source 'dbpedia'"),
        (["query", "pykeen:nations"], "error: tessera kg query needs TEXT, --entity KEY or --sparql QUERY"),
        (["embed", "pykeen:nations", "--model", "transh"], "error: unknown KGE model 'transh'"),
        (["embed", "pykeen:nations", "--init", "normal"], "error: unknown KGE init 'normal': choose default, pyg"),
    ):
        with pytest.raises(SystemExit, match="2"):
            tessera_main(["kg", *argv])
        error = capsys.readouterr().err
        assert error.startswith(message) and error.count("\n") == 1


def test_the_kg_verb_is_on_the_tessera_command_line():
    result = tessera("kg", "info")
    assert result.returncode == 0, result.stderr
    assert {"rdf", "wordnet", "pykeen", "go", "commonsense"} <= {line.split()[0] for line in result.stdout.splitlines()}
