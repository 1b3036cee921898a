"""Built-in knowledge-graph retrievers (family ``kg``), one module per technique.

``kg=text_injection`` (:mod:`.text_injection`) writes retrieved facts into the text (K-BERT style);
``kg=entity_fusion`` (:mod:`.entity_fusion`) adds KG entity embeddings to the input embeddings (ERNIE style).
Both take any graph source through ``graph`` (default ``wordnet``): ``kg.text_injection.graph=commonsense``;
:mod:`.base` has the linking settings they share. docs/kg.md has the commands and the measurements.
"""

from tessera import hookimpl
from tessera.plugins.retrievers.entity_fusion import EntityFusion
from tessera.plugins.retrievers.text_injection import TextInjection

RETRIEVERS = [TextInjection, EntityFusion]


@hookimpl
def tessera_kg_retrievers():
    return RETRIEVERS
