"""Built-in compressors, one module per technique; shared model surgery in :mod:`.surgery`.

docs/compression.md has the techniques, how they chain and what serves their exports.
"""

from tessera import hookimpl
from tessera.plugins.compressors.distill import Distill
from tessera.plugins.compressors.gradual_prune import GradualPrune
from tessera.plugins.compressors.magnitude_prune import MagnitudePrune
from tessera.plugins.compressors.onnx import Onnx
from tessera.plugins.compressors.quantize import Quantize
from tessera.plugins.compressors.semi_structured import SemiStructured
from tessera.plugins.compressors.structured_prune import StructuredPrune
from tessera.plugins.compressors.torchao import Torchao

COMPRESSORS = [MagnitudePrune, GradualPrune, StructuredPrune, SemiStructured, Distill, Quantize, Torchao, Onnx]


@hookimpl
def tessera_compressors():
    return COMPRESSORS
