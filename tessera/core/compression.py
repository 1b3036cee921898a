"""The compression phase of a stage: the post-training compressors in config order on the merged model, then the
final model evaluated again and measured beside the uncompressed one.

A post-training compressor (:meth:`tessera.core.techniques.Compressor.compress`) receives the model with its
adapters merged and a :class:`CompressionContext` (the run, the tokenizer, a seeded calibration sample of the
training split) and returns a :class:`Compressed`: the model as it now predicts and the :class:`ExportFormat` that
writes it. The last format of the chain writes ``export/``. Training-time compression (a student, a loss, masks
at the trainer's seams) happens in the trainer, through the same techniques' other methods.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tessera.core.run import Run

log = logging.getLogger("tessera")

#: The files of an export that hold weights (what "size on disk" counts).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".data")


@dataclass(frozen=True)
class ExportFormat:
    """How an export is written and whether vLLM serves it."""

    #: The format's name, as the model card and ``metrics.json`` give it (``huggingface``, ``compressed-tensors``...).
    name: str
    #: ``save(model, tokenizer, directory)`` writes the model into the (empty, temporary) export directory; the
    #: tokenizer and the model card are written beside it by the export.
    save: Callable[[object, object, Path], None]
    #: None when ``tessera serve`` (vLLM) serves the export; otherwise one line saying what serves it instead.
    not_servable: str | None = None
    #: The Python lines of the model card's "Use" section; None: loading with the transformers Auto class.
    usage: tuple[str, ...] | None = None


def save_huggingface(model, tokenizer, directory: Path) -> None:
    """A Hugging Face directory in safetensors (transformers and vLLM load it)."""
    model.save_pretrained(directory, safe_serialization=True)


#: The export of a model that no compressor re-formats.
HUGGINGFACE = ExportFormat("huggingface", save_huggingface)


@dataclass
class Compressed:
    """What a post-training compressor returns: the compressed model, as it now predicts (the final evaluation runs
    it), and how its export is written."""

    model: object
    format: ExportFormat = HUGGINGFACE
    #: Facts for the model card and ``metrics.json`` (``{"scheme": "W8A8"}``, ``{"layers_removed": 2}``).
    details: dict = field(default_factory=dict)


@dataclass
class CompressionContext:
    """What a post-training compressor works with besides the model."""

    run: Run
    tokenizer: object
    #: The training items (tokenized by the run's objective) the calibration sample is drawn from.
    train_items: list[dict]

    def calibration(self, samples: int) -> list[dict]:
        """A seeded sample of ``samples`` training items (all of them when there are fewer), the same for every
        compressor of the run."""
        order = list(range(len(self.train_items)))
        random.Random(self.run.cfg.trainer.seed).shuffle(order)
        return [self.train_items[index] for index in order[:samples]]

    def calibration_batches(self, samples: int, batch_size: int, device="cpu"):
        """The calibration sample as collated batches (inputs and targets) on ``device``."""
        from tessera.core.batching import collate, sequential_batches

        items = self.calibration(samples)
        for indices in sequential_batches(items, batch_size):
            yield collate(items, indices, self.tokenizer.pad_token_id, device)


def parameter_stats(model) -> dict:
    """``parameters`` (all elements of the model's parameters; None for a model that has none, as an ONNX Runtime
    session) and ``sparsity`` (the fraction of zeros in the floating-point weights of the linear layers inside the
    transformer layers, where pruning acts; None when there are none, as in a quantized model)."""
    import torch

    from tessera.plugins.compressors.surgery import layer_linears

    if not isinstance(model, torch.nn.Module):
        return {"parameters": None, "sparsity": None}
    weights = []
    for _, module in layer_linears(model):
        weight = module.weight
        if isinstance(weight, torch.sparse.SparseSemiStructuredTensor):  # 2:4 sparse: counted as its dense form
            weight = weight.to_dense()
        if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.is_floating_point():
            weights.append(weight)  # quantized weights (tensor subclasses) are not counted
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"parameters": sum(p.numel() for p in model.parameters()), "sparsity": zeros / total if total else None}


def state_dict_bytes(model) -> int:
    """The bytes of the model's weights as safetensors writes them (its state dict, shared tensors once)."""
    seen, size = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            size += tensor.numel() * tensor.element_size()
    return size


def weights_on_disk(directory: Path) -> int:
    """The bytes of the weight files in an export directory."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def compress(run: Run, model, tokenizer, train_items: list[dict]) -> tuple[object, ExportFormat, dict]:
    """Run the post-training compressors of the run in config order on ``model`` (adapters merged); return the
    final model, its export format and ``{compressor name: details}``."""
    context = CompressionContext(run, tokenizer, train_items)
    export_format, details = HUGGINGFACE, {}
    for compressor in run.composition.selected("compress"):
        result = compressor.compress(model, context)
        if result is None:
            continue
        model, export_format = result.model, result.format
        details[compressor.name] = result.details
        log.info("compress: %s done (%s)", compressor.label, export_format.name)
    return model, export_format, details


#: How many test examples, and how many timed passes over them, the throughput of a compressed run is measured on.
THROUGHPUT_EXAMPLES, THROUGHPUT_PASSES = 256, 3


def inference_throughput(run: Run, model, tokenizer, examples: list[dict]) -> float | None:
    """Sentences per second of ``model``'s forward passes over the first :data:`THROUGHPUT_EXAMPLES` of
    ``examples`` (tokenized by the run's objective, at ``trainer.eval_batch_size``): the median of
    :data:`THROUGHPUT_PASSES` timed passes after one warm-up batch; None without examples."""
    import statistics

    import torch

    from tessera.core.batching import model_inputs
    from tessera.core.evaluate import eval_batches

    if not examples:
        return None
    examples = examples[:THROUGHPUT_EXAMPLES]
    items = run.composition.item_builder.items(examples, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed)
    if hasattr(model, "eval"):
        model.eval()
    rates = []
    with torch.inference_mode():
        batches = [batch for _, batch in eval_batches(run, model, tokenizer, items)]
        model(**model_inputs(batches[0]))
        for _ in range(THROUGHPUT_PASSES):
            started = time.perf_counter()
            for batch in batches:
                model(**model_inputs(batch))
            rates.append(len(items) / max(time.perf_counter() - started, 1e-9))
    return statistics.median(rates)
