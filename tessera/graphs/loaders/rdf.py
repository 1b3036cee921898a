"""Any RDF file (Turtle, N-Triples, RDF/XML, JSON-LD) through rdflib: ``rdf:path/to/file.ttl``."""

from __future__ import annotations

from pathlib import Path

from tessera.graphs.loaders import GraphLoader
from tessera.graphs.rdf import rdf_format, read_rdf
from tessera.graphs.store import GraphError, KnowledgeGraph


class RDFLoader(GraphLoader):
    """An RDF file; the format comes from the suffix or from ``?format=NAME`` after the path."""

    name = "rdf"
    summary = "an RDF file through rdflib (.ttl, .nt, .rdf/.owl/.xml, .jsonld); rdf:FILE[?format=turtle]"
    argument_help = "path to an RDF file"
    version = 2  # unlabelled entities are linkable by their local name

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        path, _, fmt = self.argument.partition("?format=")
        self.path = Path(path).expanduser().resolve()
        self.format = rdf_format(self.path, fmt or None)

    def fingerprint(self) -> str:
        if not self.path.is_file():
            raise GraphError(f"RDF file {self.path} does not exist: check the path")
        stat = self.path.stat()
        return f"{self.path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.format}"

    def load(self) -> KnowledgeGraph:
        return read_rdf(self.path, self.format)
