"""RDF round trips through rdflib (Turtle, N-Triples, RDF/XML, JSON-LD), SPARQL, and malformed files."""

import pytest

from tessera.graphs.rdf import parse_file, read_rdf, sparql, to_rdflib, write_rdf
from tessera.graphs.store import MEMORY_ENV, GraphError, GraphTooLargeError, KnowledgeGraph

TURTLE = """\
@prefix ex: <http://example.org/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .

ex:paris ex:capitalOf ex:france ; rdfs:label "Paris" ; skos:altLabel "City of Light" .
ex:france ex:memberOf ex:eu ; ex:population "68000000"^^<http://www.w3.org/2001/XMLSchema#integer> .
ex:lyon ex:locatedIn ex:france .
"""

MALFORMED = {
    "bad.ttl": ("@prefix ex: <http://example.org/> .\nex:a ex:b ex:c .\nex:a ex:b ex:c ex:d .\n", 3),
    "bad.nt": ("<http://a> <http://b> <http://c> .\n<http://a> <http://b> <http://c> .\n<http://a> <b> .\n", 3),
    "bad.rdf": (
        '<?xml version="1.0"?>\n<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        "<rdf:Description>\n</rdf:RDF>\n",
        4,
    ),
    "bad.jsonld": ('{"@id": "http://a",\n "http://b": {"@id": \n}', 3),
}


@pytest.fixture
def turtle_file(tmp_path):
    path = tmp_path / "europe.ttl"
    path.write_text(TURTLE)
    return path


def test_import_maps_labels_aliases_and_literals(turtle_file):
    graph = read_rdf(turtle_file)
    assert graph.name == "europe" and graph.num_triples == 4
    paris = graph.entity_id("http://example.org/paris")
    assert graph.labels[paris] == "Paris"

    def aliases(entity):
        return sorted(n for n, e in zip(graph.alias_names, graph.alias_entities) if e == entity)

    assert aliases(paris) == ["City of Light", "Paris"]
    literal = '"68000000"^^<http://www.w3.org/2001/XMLSchema#integer>'
    assert graph.entity_id(literal) is not None and graph.labels[graph.entity_id(literal)] == "68000000"
    lyon = graph.entity_id("http://example.org/lyon")
    assert graph.labels[lyon] == "lyon" and aliases(lyon) == ["lyon"]  # an unlabelled entity is linkable by its name
    assert "http://example.org/capitalOf" in graph.relations
    assert graph.relation_labels[graph.relation_id("http://example.org/capitalOf")] == "capitalOf"


@pytest.mark.parametrize("suffix", [".ttl", ".nt", ".rdf", ".jsonld"])
def test_round_trip_through_each_format(turtle_file, tmp_path, suffix):
    graph = read_rdf(turtle_file)
    path = write_rdf(graph, tmp_path / f"copy{suffix}")
    again = read_rdf(path)
    assert sorted(again.entities) == sorted(graph.entities) and sorted(again.relations) == sorted(graph.relations)
    assert sorted(again.fact_triples(range(again.num_triples))) == sorted(graph.fact_triples(range(graph.num_triples)))
    assert dict(zip(again.entities, again.labels)) == dict(zip(graph.entities, graph.labels))
    assert set(again.alias_names) == set(graph.alias_names)


def test_non_rdf_graph_round_trips_with_tessera_iris(tmp_path):
    graph = KnowledgeGraph.from_triples(
        "tiny",
        [("dog.n.01", "hypernym", "canine.n.02"), ("a/b", "rel", "GO:0001")],
        labels={"dog.n.01": "dog"},
        aliases=[("domestic dog", "dog.n.01", 1.0)],
    )
    text = write_rdf(graph, tmp_path / "tiny.nt").read_text()
    assert "<urn:tessera:tiny/entity/dog.n.01> <urn:tessera:tiny/relation/hypernym>" in text
    again = read_rdf(tmp_path / "tiny.nt")
    assert sorted(again.entities) == sorted(graph.entities)
    assert dict(zip(again.entities, again.labels)) == dict(zip(graph.entities, graph.labels))
    assert sorted(again.fact_triples(range(2))) == sorted(graph.fact_triples(range(2)))


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_rdf_names_file_and_line(tmp_path, name):
    content, line = MALFORMED[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GraphError) as caught:
        read_rdf(path)
    message = str(caught.value)
    assert message.startswith(f"{path} line {line}: not valid") and "fix the file" in message


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(GraphError, match="cannot tell the RDF format from the suffix '.txt'"):
        read_rdf(tmp_path / "x.txt")
    with pytest.raises(GraphError, match="does not exist"):
        read_rdf(tmp_path / "missing.ttl")
    with pytest.raises(GraphError, match="unknown RDF format 'yaml'"):
        read_rdf(tmp_path / "x.ttl", fmt="yaml")


def test_huge_file_is_refused_before_parsing(turtle_file, monkeypatch):
    monkeypatch.setenv(MEMORY_ENV, "10000")
    with pytest.raises(GraphTooLargeError, match="parsing .*europe.ttl with rdflib: about .* triples x 1900 bytes"):
        parse_file(turtle_file)


def test_sparql_select_ask_and_errors(turtle_file):
    graph = read_rdf(turtle_file)
    rows = sparql(graph, "SELECT ?city WHERE { ?city <http://example.org/locatedIn> <http://example.org/france> }")
    assert rows == [{"city": "http://example.org/lyon"}]
    assert sparql(graph, "ASK { <http://example.org/paris> ?p ?o }") == [{"ask": "true"}]
    rows = sparql(graph, 'SELECT ?x WHERE { ?x <http://www.w3.org/2000/01/rdf-schema#label> "Paris" }')
    assert rows == [{"x": "http://example.org/paris"}]
    with pytest.raises(GraphError, match="SPARQL query failed .*: fix the query"):
        sparql(graph, "SELECT WHERE {")
    tiny = KnowledgeGraph.from_triples("tiny", [("dog.n.01", "hypernym", "canine.n.02")])
    rows = sparql(tiny, "SELECT ?t WHERE { <urn:tessera:tiny/entity/dog.n.01> ?p ?t }", to_rdflib(tiny))
    assert rows == [{"t": "canine.n.02"}]
