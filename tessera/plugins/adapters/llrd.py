"""``llrd``: layer-wise learning-rate decay (Howard & Ruder, 2018; Clark et al., 2020): lower layers train slower."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.core.techniques import Adapter, TechniqueConfig
from tessera.plugins.adapters.layers import depth, layer_count, require_layers


@dataclass
class LayerwiseDecayConfig(TechniqueConfig):
    """The decay."""

    #: The ratio between the learning rates of adjacent depths: the top (head) trains at trainer.learning_rate,
    #: the top layer at decay times that, ..., the embeddings at decay^(layers + 1) times that.
    decay: float = 0.9


class LayerwiseDecay(Adapter):
    """Scales each parameter's learning rate by ``decay ** (distance from the top)``; changes nothing in the
    model and owns no parameters. Stacks with any adapter (``adapter=[lora,llrd]`` decays the LoRA weights' rates)."""

    name = "llrd"
    Config = LayerwiseDecayConfig
    owns_parameters = False

    def validate(self, composition):
        if not 0 < self.config.decay <= 1:
            raise ConfigError(f"adapter.llrd.decay={self.config.decay} must be in (0, 1]")
        require_layers(self, composition)

    def apply(self, model, run):
        self.layers = layer_count(name for name, _ in model.named_parameters())
        return model

    def learning_rate_scale(self, parameter_name):
        return self.config.decay ** (self.layers + 1 - depth(parameter_name, self.layers))
