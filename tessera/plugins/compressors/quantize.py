"""``quantize``: integer quantization of the transformer layers' linear weights through compressed-tensors, exported
in the compressed-tensors format that vLLM serves on CPU (``W8A8``: int8 kernels; ``W4A16``: 4-bit weight kernels).

``method=rtn`` (round to nearest) computes the weights' scales from their ranges in this environment, without
calibration. ``method=smoothquant`` and ``method=gptq`` run llm-compressor's ``oneshot`` on the calibration sample;
llm-compressor cannot be installed beside vLLM's pins, so it runs in a virtual environment of its own, built on
first use under ``$TESSERA_HOME/envs/llmcompressor``. Embeddings, norms and the heads (classifier, pooler,
``lm_head``) stay dense.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tessera.core.compression import Compressed, ExportFormat
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import layer_linears

log = logging.getLogger("tessera")

#: The schemes and what they quantize (both are served by vLLM on CPU).
SCHEMES = {
    "W8A8": "int8 weights per output channel, int8 activations per token computed at run time",
    "W4A16": "4-bit weights per group of group_size input columns, activations kept in floating point",
}
#: How the weights' quantization parameters are found.
METHODS = {
    "rtn": "round to nearest from each channel's or group's range, no calibration",
    "smoothquant": "llm-compressor: SmoothQuant (activation outliers moved into the weights) then W8A8",
    "gptq": "llm-compressor: GPTQ (rounding errors compensated on the calibration sample)",
}
#: The llm-compressor release the isolated environment installs.
LLMCOMPRESSOR = "llmcompressor==0.14.0.1"


@dataclass
class QuantizeConfig(TechniqueConfig):
    """The quantization scheme, its group size, how the scales are found and the calibration sample size."""

    #: ``W8A8`` or ``W4A16``.
    scheme: str = "W8A8"
    #: Input columns sharing one scale in ``W4A16`` (must divide the linear layers' input sizes).
    group_size: int = 64
    #: ``rtn`` (default), ``smoothquant`` (W8A8 only) or ``gptq``.
    method: str = "rtn"
    #: Training items llm-compressor calibrates on (``smoothquant`` and ``gptq``).
    calibration_samples: int = 128


class Quantize(Compressor):
    """Quantizes the linear layers inside the transformer layers; the in-memory model then predicts as the
    quantized model does (quantize-dequantize in its forward pass) and the export is compressed-tensors."""

    name = "quantize"
    Config = QuantizeConfig
    terminal = True

    def validate(self, composition):
        config = self.config
        if config.scheme not in SCHEMES:
            raise ConfigError(f"{self.label}: scheme={config.scheme} is not one of {', '.join(SCHEMES)}")
        if config.method not in METHODS:
            raise ConfigError(f"{self.label}: method={config.method} is not one of {', '.join(METHODS)}")
        if config.method == "smoothquant" and config.scheme != "W8A8":
            raise ConfigError(f"{self.label}: method=smoothquant smooths activations for W8A8: use scheme=W8A8")
        if config.method == "smoothquant":
            check_smoothquant_layers(self.label, composition)
        if config.method != "rtn" and config.calibration_samples < 1:
            raise ConfigError(f"{self.label}: calibration_samples={config.calibration_samples} must be at least 1")
        if config.scheme == "W4A16":
            if config.group_size < 1:
                raise ConfigError(f"{self.label}: group_size={config.group_size} must be a positive integer")
            sizes = linear_input_sizes(composition.cfg.model)
            uneven = sorted(name for name, size in sizes.items() if size % config.group_size)
            if uneven:
                divisors = [g for g in (128, 64, 32, 16) if all(size % g == 0 for size in sizes.values())]
                raise IncompatibleError(
                    f"{self.label} group_size={config.group_size}",
                    f"model={composition.cfg.model.name}",
                    f"its {uneven[0]} ({sizes[uneven[0]]}) is not a multiple of the group size; "
                    f"choose group_size={divisors[0] if divisors else 'a divisor of it'}",
                )

    def compress(self, model, context):
        details = {"scheme": self.config.scheme, "method": self.config.method}
        if self.config.scheme == "W4A16":
            details["group_size"] = self.config.group_size
        if self.config.method == "rtn":
            model = round_to_nearest(model, self.config.scheme, self.config.group_size)
        else:
            model = llmcompressor_oneshot(model, context, self.config)
        details["quantized_layers"] = len(quantized_modules(model))
        return Compressed(model, format=COMPRESSED_TENSORS, details=details)


def linear_input_sizes(model_cfg) -> dict[str, int]:
    """``{config key: size}`` of the input sizes of the transformer layers' linear layers (hidden size, the
    feed-forward size and the attention output's), from the model's config (with ``config_overrides`` for a
    ``random_init`` model)."""
    from transformers import AutoConfig

    from tessera.core.models import pretrained_path

    overrides = dict(model_cfg.config_overrides) if model_cfg.random_init else {}
    config = AutoConfig.from_pretrained(pretrained_path(model_cfg), **overrides)
    sizes = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size}
    head_dim = getattr(config, "head_dim", None)
    if head_dim:
        sizes["num_attention_heads * head_dim"] = config.num_attention_heads * head_dim
    return sizes


def check_smoothquant_layers(label: str, composition) -> None:
    """Refuse ``method=smoothquant`` on a model whose layers llm-compressor's SmoothQuant mappings do not match
    (they smooth ``input_layernorm`` into ``q/k/v_proj`` and ``post_attention_layernorm`` into the feed-forward
    input, Llama's layout; BERT's post-norm layers have no such pairs and would be quantized unsmoothed)."""
    from tessera.core.models import module_names

    names = module_names(composition.cfg.model, composition.task)
    if not any(name.endswith("input_layernorm") for name in names) or not any(n.endswith("q_proj") for n in names):
        architecture = next(iter(names.values()))
        raise IncompatibleError(
            f"{label} method=smoothquant",
            f"model={composition.cfg.model.name}",
            f"llm-compressor's SmoothQuant smooths Llama-style layers (input_layernorm -> q/k/v_proj), which "
            f"{architecture} lacks; use method=gptq or method=rtn",
        )


def quantization_config(model, scheme: str, group_size: int):
    """The compressed-tensors config of ``scheme`` for the linear layers inside ``model``'s transformer layers;
    every other linear layer (heads, pooler) is ignored."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    if scheme == "W8A8":
        arguments = {
            "weights": QuantizationArgs(num_bits=8, type="int", strategy="channel", symmetric=True, dynamic=False),
            "input_activations": QuantizationArgs(
                num_bits=8, type="int", strategy="token", symmetric=True, dynamic=True
            ),
        }
    else:
        arguments = {
            "weights": QuantizationArgs(
                num_bits=4, type="int", strategy="group", group_size=group_size, symmetric=True, dynamic=False
            )
        }
    import torch

    inside = {name for name, _ in layer_linears(model)}
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], **arguments)},
        ignore=sorted(linears - inside),
    )


def round_to_nearest(model, scheme: str, group_size: int):
    """Attach ``scheme`` to the transformer layers' linear layers and set each weight's scale from its range per
    output channel (``W8A8``) or per group of ``group_size`` input columns (``W4A16``). Returns ``model``, which
    now quantizes and dequantizes its weights (and, for W8A8, its activations) in every forward pass."""
    import torch
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams

    apply_quantization_config(model, quantization_config(model, scheme, group_size))
    with torch.no_grad():
        for module in quantized_modules(model):
            arguments = module.quantization_scheme.weights
            weight = module.weight.detach().float()
            if arguments.strategy == "group":
                weight = weight.reshape(weight.shape[0], -1, arguments.group_size)
            lowest, highest = weight.amin(dim=-1), weight.amax(dim=-1)
            scale, zero_point = calculate_qparams(lowest, highest, arguments)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))
            module.quantization_status = QuantizationStatus.FROZEN
    return model


def quantized_modules(model) -> list:
    """The modules of ``model`` that carry a quantization scheme."""
    return [module for module in model.modules() if getattr(module, "quantization_scheme", None) is not None]


def save_compressed_tensors(model, tokenizer, directory: Path) -> None:
    """Write a quantized model as compressed-tensors: integer (or packed 4-bit) weights, their scales, and the
    ``quantization_config`` in config.json that transformers and vLLM read. The model's weights are compressed in
    place (it decompresses itself again on its next forward pass)."""
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(directory, safe_serialization=True)
    compressor.update_config(str(directory))


#: The export of a quantized model.
COMPRESSED_TENSORS = ExportFormat("compressed-tensors", save_compressed_tensors)


def llmcompressor_python() -> Path:
    """The Python of the isolated llm-compressor environment, built on first use (minutes: it installs
    llm-compressor and its own transformers and compressed-tensors, with the torch this process runs)."""
    import torch

    from tessera.core.assets import tessera_home

    home = tessera_home() / "envs" / "llmcompressor"
    python = home / "bin" / "python"
    done = home / ".complete"
    if done.is_file():
        return python
    log.info("quantize: building the llm-compressor environment in %s (once; it takes minutes)", home)
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    constraints = home.parent / "llmcompressor-constraints.txt"
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    commands = [
        [sys.executable, "-m", "venv", str(home)],
        [str(python), "-m", "pip", "install", "--quiet", LLMCOMPRESSOR, "-c", str(constraints)],
    ]
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            shutil.rmtree(home, ignore_errors=True)
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"compress=quantize: building the llm-compressor environment failed: {last}")
    done.write_text(LLMCOMPRESSOR + "\n")
    return python


#: The script the llm-compressor environment runs: ``script.py WORK`` reads WORK/job.json, the model in
#: WORK/model and the calibration token ids in WORK/calibration.jsonl, and writes WORK/quantized.
ONESHOT_SCRIPT = """
import json, sys
from pathlib import Path

import transformers
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from llmcompressor.modifiers.transform import SmoothQuantModifier

work = Path(sys.argv[1])
job = json.loads((work / "job.json").read_text())
model = getattr(transformers, job["auto_class"]).from_pretrained(work / "model", dtype="float32")
rows = [json.loads(line) for line in (work / "calibration.jsonl").read_text().splitlines()]
dataset = Dataset.from_list(rows)
if job["scheme"] == "W8A8":
    arguments = {"targets": ["Linear"], "scheme": "W8A8", "ignore": job["ignore"]}
else:
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": job["group_size"]}
    arguments = {"config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}, "ignore": job["ignore"]}
if job["method"] == "smoothquant":
    recipe = [SmoothQuantModifier(smoothing_strength=0.8), QuantizationModifier(**arguments)]
else:
    recipe = [GPTQModifier(**arguments)]
oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=job["max_length"],
        num_calibration_samples=len(rows), output_dir=str(work / "quantized"))
"""


def llmcompressor_oneshot(model, context, config: QuantizeConfig):
    """Quantize ``model`` with llm-compressor in its own environment (the merged model, the tokenizer and the
    calibration sample go through a temporary directory) and load the result back, decompressed, to evaluate."""
    import transformers
    from transformers import CompressedTensorsConfig

    from tessera.core.models import AUTO_CLASSES

    python = llmcompressor_python()
    plan = quantization_config(model, config.scheme, config.group_size)
    auto_class = AUTO_CLASSES[context.run.composition.task]
    with tempfile.TemporaryDirectory(prefix="tessera-quantize-") as work:
        work = Path(work)
        model.save_pretrained(work / "model", safe_serialization=True)
        context.tokenizer.save_pretrained(work / "model")
        rows = [
            {"input_ids": item["input_ids"], "attention_mask": [1] * len(item["input_ids"])}
            for item in context.calibration(config.calibration_samples)
        ]
        (work / "calibration.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        job = {
            "auto_class": auto_class,
            "scheme": config.scheme,
            "group_size": config.group_size,
            "method": config.method,
            "ignore": plan.ignore,
            "max_length": context.run.cfg.data.max_length,
        }
        (work / "job.json").write_text(json.dumps(job))
        (work / "oneshot.py").write_text(ONESHOT_SCRIPT)
        log.info("quantize: llm-compressor %s on %d calibration items", config.method, len(rows))
        result = subprocess.run([str(python), str(work / "oneshot.py"), str(work)], capture_output=True, text=True)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"compress=quantize: llm-compressor {config.method} failed: {last}")
        return getattr(transformers, auto_class).from_pretrained(
            work / "quantized", quantization_config=CompressedTensorsConfig(run_compressed=False)
        )
