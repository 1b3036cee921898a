"""Round trips between :class:`~tessera.graphs.store.KnowledgeGraph` and rdflib: parse and write Turtle,
N-Triples, RDF/XML and JSON-LD, and hand SPARQL queries to rdflib.

Mapping: an IRI entity keeps its IRI as key; a blank node is ``_:id`` and a literal its N3 form (``"42"^^<...>``).
Entities of graphs that did not come from RDF (WordNet synsets, GO ids) get IRIs ``urn:tessera:<graph>/entity/<key>``
and relations ``urn:tessera:<graph>/relation/<key>``, which map back to the plain keys on import. The display
label is written as ``rdfs:label`` and the other aliases as ``skos:altLabel``; on import the first ``rdfs:label``
(or ``skos:prefLabel``) becomes the label and every label becomes an alias, so annotations are not edges; an
entity with no label at all is known by its IRI's local name (``http://example.org/lyon``: ``lyon``).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

from tessera.graphs.store import GraphError, KnowledgeGraph, check_memory

#: Format names by file suffix, and the name rdflib uses for each.
FORMATS = {
    ".ttl": "turtle",
    ".nt": "nt",
    ".rdf": "xml",
    ".owl": "xml",
    ".xml": "xml",
    ".jsonld": "json-ld",
    ".json": "json-ld",
}
#: Rough bytes of file per triple, by format: to estimate a file's triples before parsing it.
_FILE_BYTES_PER_TRIPLE = {"turtle": 40, "nt": 100, "xml": 80, "json-ld": 80}
#: Peak memory per triple of parsing through rdflib and converting (measured on GO as N-Triples: 1,470 bytes for
#: rdflib's in-memory store, its indexed dicts of terms, and 430 more for the conversion to the store).
RDFLIB_BYTES_PER_TRIPLE = 1900
_TESSERA_IRI = re.compile(r"urn:tessera:[^/]*/(entity|relation)/(.*)")
_ABSOLUTE_IRI = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|urn:|mailto:|tag:)")


def rdf_format(path: Path, fmt: str | None = None) -> str:
    """rdflib's name of the format of ``path`` (from ``fmt`` or the file suffix)."""
    if fmt:
        aliases = {
            "ttl": "turtle",
            "n-triples": "nt",
            "ntriples": "nt",
            "rdfxml": "xml",
            "rdf/xml": "xml",
            "jsonld": "json-ld",
            "json": "json-ld",
        }
        fmt = aliases.get(fmt.lower(), fmt.lower())
        if fmt not in _FILE_BYTES_PER_TRIPLE:
            raise GraphError(f"unknown RDF format {fmt!r}: choose turtle, nt, xml or json-ld")
        return fmt
    try:
        return FORMATS[Path(path).suffix.lower()]
    except KeyError:
        raise GraphError(
            f"{path}: cannot tell the RDF format from the suffix {Path(path).suffix!r}: use one of "
            f"{', '.join(sorted(FORMATS))} or name the format (rdf:FILE?format=turtle)"
        ) from None


def parse_file(path: Path, fmt: str | None = None):
    """Parse an RDF file into an ``rdflib.Graph``; a syntax error raises :class:`GraphError` with file and line.

    A file whose estimated triples would not fit in memory through rdflib is refused before parsing.
    """
    import rdflib

    path = Path(path)
    fmt = rdf_format(path, fmt)
    if not path.is_file():
        raise GraphError(f"RDF file {path} does not exist: check the path")
    estimate = path.stat().st_size // _FILE_BYTES_PER_TRIPLE[fmt]
    check_memory(estimate, 0, f"parsing {path} with rdflib", bytes_per_triple=RDFLIB_BYTES_PER_TRIPLE)
    graph = rdflib.Graph()
    try:
        graph.parse(str(path), format=fmt)
    except Exception as error:  # rdflib raises a different exception type for each syntax
        line, reason = _error_location(error, path, fmt)
        where = f"{path} line {line}" if line else str(path)
        raise GraphError(f"{where}: not valid {fmt} RDF ({reason}): fix the file or name its format") from None
    return graph


def _error_location(error: Exception, path: Path, fmt: str) -> tuple[int | None, str]:
    """The 1-based line of a parse error and a short reason, for every syntax rdflib reads."""
    if hasattr(error, "getLineNumber"):  # RDF/XML: xml.sax.SAXParseException
        return error.getLineNumber(), error.getMessage()
    if hasattr(error, "lines") and hasattr(error, "_why"):  # Turtle / N3: notation3.BadSyntax
        return error.lines + 1, error._why
    if hasattr(error, "lineno"):  # JSON-LD: json.JSONDecodeError
        return error.lineno, error.msg
    if fmt == "nt":
        return _bad_ntriples_line(path), str(error).splitlines()[0][:120]
    return None, str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _bad_ntriples_line(path: Path) -> int | None:
    """The first line of an N-Triples file that rdflib cannot parse on its own (rdflib does not say)."""
    import rdflib

    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rdflib.Graph().parse(data=line, format="nt")
            except Exception:  # the same parser, one line at a time
                return number
    return None


def _key(term) -> str:
    from rdflib import BNode, Literal

    if isinstance(term, Literal):
        return term.n3()
    if isinstance(term, BNode):
        return f"_:{term}"
    match = _TESSERA_IRI.fullmatch(str(term))
    return unquote(match[2]) if match else str(term)


def _local_name(iri: str) -> str:
    tail = re.split(r"[#/]", iri.rstrip("/#"))[-1]
    return tail or iri


def from_rdflib(rdf_graph, name: str) -> KnowledgeGraph:
    """A :class:`KnowledgeGraph` from an ``rdflib.Graph``: labels and alternative labels become labels and
    aliases; every other triple is an edge (literal objects are entities keyed by their N3 form)."""
    from rdflib import Literal
    from rdflib.namespace import RDFS, SKOS

    label_predicates = {RDFS.label: 0, SKOS.prefLabel: 1, SKOS.altLabel: 2}
    labels: dict[str, tuple[int, str]] = {}
    aliases: list[tuple[str, str, float]] = []
    triples, relation_labels, entity_labels = [], {}, {}
    for subject, predicate, obj in rdf_graph:
        if predicate in label_predicates and isinstance(obj, Literal):
            key, rank = _key(subject), label_predicates[predicate]
            if rank < 2 and (key not in labels or rank < labels[key][0]):
                labels[key] = (rank, str(obj))
            aliases.append((str(obj), key, 1.0))
            continue
        head, relation, tail = _key(subject), _key(predicate), _key(obj)
        triples.append((head, relation, tail))
        relation_labels.setdefault(relation, _local_name(relation).replace("_", " "))
        for term, key in ((subject, head), (obj, tail)):
            if key not in entity_labels:
                entity_labels[key] = str(term) if isinstance(term, Literal) else _key_label(key)
    entity_labels.update({key: text for key, (_, text) in labels.items()})
    named = {key for _, key, _ in aliases}
    aliases += [(label, key, 1.0) for key, label in entity_labels.items() if key not in named]
    return KnowledgeGraph.from_triples(
        name, triples, labels=entity_labels, relation_labels=relation_labels, aliases=aliases
    )


def _term(key: str, graph_name: str, kind: str):
    from rdflib import BNode, URIRef
    from rdflib.util import from_n3

    if key.startswith("_:"):
        return BNode(key[2:])
    if key.startswith('"'):
        return from_n3(key)
    if _ABSOLUTE_IRI.match(key):
        return URIRef(key)
    return URIRef(f"urn:tessera:{quote(graph_name, safe='')}/{kind}/{quote(key, safe='')}")


def to_rdflib(graph: KnowledgeGraph):
    """An ``rdflib.Graph`` holding every triple of ``graph``, its labels (``rdfs:label``) and aliases
    (``skos:altLabel``)."""
    import rdflib
    from rdflib import Literal
    from rdflib.namespace import RDFS, SKOS

    check_memory(
        graph.num_triples + graph.num_entities,
        0,
        f"graph {graph.name} as rdflib",
        bytes_per_triple=RDFLIB_BYTES_PER_TRIPLE,
    )
    rdf_graph = rdflib.Graph()
    rdf_graph.bind("rdfs", RDFS)
    rdf_graph.bind("skos", SKOS)
    entities = [_term(key, graph.name, "entity") for key in graph.entities]
    relations = [_term(key, graph.name, "relation") for key in graph.relations]
    for head, relation, tail in graph.triples.tolist():
        rdf_graph.add((entities[head], relations[relation], entities[tail]))
    for index, (key, label) in enumerate(zip(graph.entities, graph.labels)):
        if not key.startswith('"') and label != _key_label(key):
            rdf_graph.add((entities[index], RDFS.label, Literal(label)))
    for alias, entity in zip(graph.alias_names, graph.alias_entities.tolist()):
        if alias != graph.labels[entity]:
            rdf_graph.add((entities[entity], SKOS.altLabel, Literal(alias)))
    return rdf_graph


def _key_label(key: str) -> str:
    """The label :func:`from_rdflib` gives an entity with no ``rdfs:label``."""
    return _local_name(key) if _ABSOLUTE_IRI.match(key) else key


def read_rdf(path: Path, fmt: str | None = None, name: str | None = None) -> KnowledgeGraph:
    """Parse an RDF file into a :class:`KnowledgeGraph` named after the file."""
    return from_rdflib(parse_file(path, fmt), name or Path(path).stem)


def write_rdf(graph: KnowledgeGraph, path: Path, fmt: str | None = None) -> Path:
    """Serialize ``graph`` to ``path`` (format from ``fmt`` or the suffix), atomically."""
    from tessera.core.files import write_text

    fmt = rdf_format(path, fmt)
    write_text(Path(path), to_rdflib(graph).serialize(format=fmt))
    return Path(path)


def sparql(graph: KnowledgeGraph, query: str, rdf_graph=None) -> list[dict[str, str]]:
    """Run a SPARQL query through rdflib on ``graph`` (or on an already converted ``rdf_graph``).

    Returns one dict per result row, variable name -> entity key (``urn:tessera:`` IRIs mapped back to plain
    keys) or a literal's text; in queries, entities of non-RDF graphs are ``<urn:tessera:<graph>/entity/<key>>``.
    A malformed query raises :class:`GraphError`.
    """
    rdf_graph = rdf_graph if rdf_graph is not None else to_rdflib(graph)
    try:
        result = rdf_graph.query(query)
        rows = list(result)
    except Exception as error:  # pyparsing and rdflib raise many types for bad queries
        raise GraphError(f"SPARQL query failed ({str(error).splitlines()[0][:160]}): fix the query") from None
    if result.type == "ASK":
        return [{"ask": str(bool(result.askAnswer)).lower()}]
    if result.type != "SELECT":
        return [{"subject": _plain(s), "predicate": _plain(p), "object": _plain(o)} for s, p, o in rows]
    names = [str(v) for v in result.vars]
    return [{name: _plain(value) for name, value in zip(names, row)} for row in rows]


def _plain(term) -> str | None:
    from rdflib import Literal

    if term is None:
        return None
    return str(term) if isinstance(term, Literal) else _key(term)
