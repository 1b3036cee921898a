"""``magnitude_prune``: unstructured pruning of the smallest-magnitude weights of the transformer layers' linear
weights (global or per layer, ``torch.nn.utils.prune``), made permanent. Zeros alone save nothing when served
dense: chain a compressor that stores them sparsely, or prune structurally (``structured_prune``)."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.compression import Compressed
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import check_fraction, layer_linears


@dataclass
class MagnitudePruneConfig(TechniqueConfig):
    """The fraction of weights to zero, and whether it is reached over all layers together or in each."""

    sparsity: float = 0.5
    #: ``global``: the smallest weights of all the layers together (layers differ in sparsity); ``layer``: the same
    #: sparsity in every linear layer.
    scope: str = "global"


class MagnitudePrune(Compressor):
    """Zeros the ``sparsity`` fraction of smallest weights by absolute value (L1 unstructured)."""

    name = "magnitude_prune"
    Config = MagnitudePruneConfig

    def validate(self, composition):
        check_fraction(self.label, "sparsity", self.config.sparsity)
        if self.config.scope not in ("global", "layer"):
            from tessera.core.errors import ConfigError

            raise ConfigError(f"{self.label}: scope={self.config.scope} is not one of global, layer")

    def compress(self, model, context):
        from torch.nn.utils import prune

        targets = [(module, "weight") for _, module in layer_linears(model)]
        if self.config.scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=self.config.sparsity)
        else:
            for module, parameter in targets:
                prune.l1_unstructured(module, parameter, amount=self.config.sparsity)
        for module, parameter in targets:
            prune.remove(module, parameter)
        return Compressed(model, details={"sparsity": self.config.sparsity, "scope": self.config.scope})
