"""A sequence classifier in ONNX: exported from a transformers model (the dynamo exporter, dynamic batch and sequence
axes) and run by ONNX Runtime behind the call the pipeline makes of a transformers model, so that the evaluation,
the throughput measurement and ``tessera predict`` run it unchanged."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

#: The graph's file in an ONNX export (beside ``config.json`` and the tokenizer).
ONNX_FILE = "model.onnx"
#: The inputs a graph may take, in the order the exporter declares them.
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxClassifierOutput:
    """What a call returns: the ``logits`` (a float32 torch tensor), as a transformers classifier's output has."""

    def __init__(self, logits):
        self.logits = logits


class OnnxClassifier:
    """An ONNX Runtime session of a sequence classifier called like its transformers model:
    ``model(input_ids=..., attention_mask=..., token_type_ids=...)`` with torch tensors returns an object with
    ``.logits``. It has no torch parameters (the evaluation runs it on the CPU)."""

    def __init__(self, graph: bytes, config, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        #: The serialized graph (what :meth:`save` writes).
        self.graph = graph
        #: The transformers config of the exported model (labels, architecture), written beside the graph.
        self.config = config
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]

    @classmethod
    def from_directory(cls, directory: Path, threads: int | None = None) -> OnnxClassifier:
        """The classifier of an ONNX export directory (``model.onnx`` and ``config.json``)."""
        from transformers import AutoConfig

        directory = Path(directory)
        return cls((directory / ONNX_FILE).read_bytes(), AutoConfig.from_pretrained(directory), threads)

    def eval(self) -> OnnxClassifier:
        """A no-op (the graph has no training mode), for the pipeline's ``model.eval()``."""
        return self

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, **ignored) -> OnnxClassifierOutput:
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {}
        for name in self.input_names:
            value = given[name]
            if value is None:  # attention over every token, a single segment: the transformers defaults
                value = torch.ones_like(input_ids) if name == "attention_mask" else torch.zeros_like(input_ids)
            feeds[name] = value.detach().cpu().to(torch.int64).numpy()
        (logits,) = self.session.run(["logits"], feeds)
        return OnnxClassifierOutput(torch.from_numpy(logits))

    def save(self, directory: Path) -> None:
        """Write ``model.onnx`` and ``config.json`` into ``directory``."""
        (Path(directory) / ONNX_FILE).write_bytes(self.graph)
        self.config.save_pretrained(directory)


def graph_inputs(model) -> list[str]:
    """The inputs of :data:`GRAPH_INPUTS` that the model's forward takes."""
    accepted = inspect.signature(model.forward).parameters
    return [name for name in GRAPH_INPUTS if name in accepted]


def export_classifier(model, sample: dict) -> bytes:
    """The serialized ONNX graph of a transformers sequence classifier, traced on ``sample`` (a collated batch of
    at least two items) by the dynamo exporter with dynamic batch and sequence axes; one self-contained file."""
    import torch

    class LogitsOnly(torch.nn.Module):
        """The model's forward on the graph's inputs, with its logits as the only output."""

        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.classifier(**{name: value for name, value in given.items() if value is not None}).logits

    names = graph_inputs(model)
    example = {name: sample.get(name, torch.zeros_like(sample["input_ids"])).cpu() for name in names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with tempfile.TemporaryDirectory(prefix="tessera-onnx-") as scratch:
        path = Path(scratch) / ONNX_FILE
        torch.onnx.export(
            LogitsOnly(model.cpu().eval()),
            (),
            str(path),
            kwargs=example,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return path.read_bytes()


def quantize_graph(graph: bytes, per_channel: bool) -> bytes:
    """The graph with ONNX Runtime's dynamic int8 quantization (int8 weights, activations quantized per call);
    ``per_channel``: a weight scale per output channel instead of one per matrix."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tessera-onnx-") as scratch:
        source, target = Path(scratch) / "float.onnx", Path(scratch) / ONNX_FILE
        source.write_bytes(graph)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel)
        return target.read_bytes()
