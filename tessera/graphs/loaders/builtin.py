"""tessera's own graph loaders, registered through the ``tessera_kg_loaders`` hook like any plugin's."""

from tessera import hookimpl
from tessera.graphs.loaders.commonsense import CommonsenseLoader
from tessera.graphs.loaders.gene_ontology import GeneOntologyLoader
from tessera.graphs.loaders.pykeen import PyKEENLoader
from tessera.graphs.loaders.rdf import RDFLoader
from tessera.graphs.loaders.tsv import TSVLoader
from tessera.graphs.loaders.wn18rr import WN18RRLoader
from tessera.graphs.loaders.wordnet import WordNetLoader


@hookimpl
def tessera_kg_loaders():
    return [RDFLoader, WordNetLoader, PyKEENLoader, GeneOntologyLoader, CommonsenseLoader, TSVLoader, WN18RRLoader]
