"""BitFit (Ben Zaken et al., 2022): fine-tune only the bias terms and the task head.

A complete third-party tessera plugin: one technique class with its config dataclass, registered through the
``tessera_adapters`` hook, and a config directory (``experiment=bitfit_smoke``) added to Hydra's search path.
"""

from dataclasses import dataclass, field

from tessera import hookimpl
from tessera.core.techniques import Adapter, TechniqueConfig


@dataclass
class BitFitConfig(TechniqueConfig):
    """Which parameters stay trainable besides the biases."""

    #: Name fragments of modules trained in full (the classification head of BERT-like and Llama-like models).
    head_modules: list[str] = field(default_factory=lambda: ["classifier", "score"])


class BitFit(Adapter):
    """Train the biases and the head (tessera freezes what no adapter owns); nothing to merge at export."""

    name = "bitfit"
    Config = BitFitConfig

    def apply(self, model, run):
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or any(fragment in name for fragment in self.config.head_modules):
                parameter.requires_grad = True
        return model


@hookimpl
def tessera_adapters():
    return [BitFit]


@hookimpl
def tessera_config_search_path():
    return ["pkg://tessera_plugin_example.conf"]
