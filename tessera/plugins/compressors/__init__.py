"""Built-in compressors, one module per technique; shared model surgery in :mod:`.surgery`.

docs/compression.md has the techniques, how they chain and what serves their exports.
"""

from tessera import hookimpl
from tessera.plugins.compressors.distill import Distill
from tessera.plugins.compressors.magnitude_prune import MagnitudePrune

COMPRESSORS = [MagnitudePrune, Distill]


@hookimpl
def tessera_compressors():
    return COMPRESSORS
