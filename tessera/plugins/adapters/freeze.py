"""``freeze``: keep the embeddings and / or the bottom layers at their pretrained values."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.freezing_base import FreezingAdapter
from tessera.plugins.adapters.layers import depth, layer_count, require_layers


@dataclass
class FreezeConfig(TechniqueConfig):
    """What to freeze."""

    #: Freeze the embeddings.
    embeddings: bool = True
    #: Freeze the bottom N transformer layers.
    layers: int = 0


class Freeze(FreezingAdapter):
    """Freezes the embeddings and / or the bottom ``layers`` transformer layers: of the base model, or of the
    parameters the other adapters own (``adapter=[lora,freeze]`` trains LoRA in the upper layers only)."""

    name = "freeze"
    Config = FreezeConfig

    def validate(self, composition):
        embeddings, layers = self.config.embeddings, self.config.layers
        if layers < 0 or (not embeddings and layers == 0):
            raise ConfigError(
                f"adapter.freeze.embeddings={str(embeddings).lower()} adapter.freeze.layers={layers} freezes nothing: "
                "set adapter.freeze.layers to a positive number of bottom layers or adapter.freeze.embeddings=true"
            )
        if layers:
            total = require_layers(self, composition)
            if layers > total:
                raise IncompatibleError(
                    f"{self.label} (layers={layers})",
                    f"model={composition.cfg.model.name}",
                    f"the model has {total} layers: freeze at most {total} (adapter=linear_probe trains the head alone)",
                )

    def apply(self, model, run):
        layers = layer_count(name for name, _ in model.named_parameters())
        for name, parameter in self.trainable(model).items():
            at = depth(name, layers)
            if (at == 0 and self.config.embeddings) or 1 <= at <= self.config.layers:
                parameter.requires_grad = False
        return model
