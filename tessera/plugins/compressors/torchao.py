"""``torchao``: int8 quantization of the linear layers inside the transformer layers by torchao (heads, pooler and
embeddings stay in float), through transformers' ``TorchAoConfig`` so that the export is a transformers checkpoint
(safetensors with its ``quantization_config``) that ``from_pretrained`` reloads exactly. vLLM does not serve it in
tessera's serving environment; transformers does (``tessera predict --engine transformers``)."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.compression import Compressed, ExportFormat, save_huggingface
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import layer_linears

#: The schemes, by name: the torchao config class each applies (both run on the CPU).
SCHEMES = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
}


@dataclass
class TorchaoConfig(TechniqueConfig):
    """The quantization scheme."""

    #: ``int8_weight_only``: int8 weights, dequantized in the matrix product; ``int8_dynamic``: int8 weights and
    #: activations quantized per token at each call.
    scheme: str = "int8_weight_only"


TORCHAO = ExportFormat(
    "torchao",
    save_huggingface,
    not_servable=(
        "vLLM does not serve torchao checkpoints in tessera's serving environment: "
        "run it with tessera predict RUN_DIR FILE --engine transformers"
    ),
)


class Torchao(Compressor):
    """Quantizes the transformer layers' linear weights to int8 with torchao."""

    name = "torchao"
    Config = TorchaoConfig
    terminal = True

    def validate(self, composition):
        from tessera.core.errors import ConfigError

        if self.config.scheme not in SCHEMES:
            raise ConfigError(f"{self.label}: scheme={self.config.scheme} is not one of {', '.join(SCHEMES)}")

    def compress(self, model, context):
        import tempfile

        import torch
        import torchao.quantization
        import transformers

        from tessera.core.models import AUTO_CLASSES

        quantized = {name for name, _ in layer_linears(model)}
        kept = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        kept = [name for name in kept if name not in quantized]
        scheme = getattr(torchao.quantization, SCHEMES[self.config.scheme])()
        config = transformers.TorchAoConfig(scheme, modules_to_not_convert=kept)
        auto_class = getattr(transformers, AUTO_CLASSES[context.run.composition.task])
        # transformers quantizes while it loads, and keeps the quantizer that saves and reloads the checkpoint
        with tempfile.TemporaryDirectory(prefix="tessera-torchao-") as scratch:
            model.save_pretrained(scratch, safe_serialization=True)
            model = auto_class.from_pretrained(scratch, quantization_config=config).eval()
        return Compressed(
            model,
            format=TORCHAO,
            details={"scheme": self.config.scheme, "quantized_layers": len(quantized), "float_layers": kept},
        )
