"""``onnx``: the final sequence classifier exported to ONNX (``torch.onnx`` dynamo exporter, dynamic batch and
sequence axes) and, by default, quantized to int8 by ONNX Runtime's dynamic quantization. The export is checked
against the PyTorch model on the calibration sample before it is written; ONNX Runtime runs it (``tessera
predict``), vLLM does not."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.compression import Compressed, ExportFormat
from tessera.core.techniques import Compressor, TechniqueConfig

#: Items of the calibration sample the export is checked on.
CHECK_SAMPLES = 64
#: The largest difference in class probability allowed between the float ONNX graph and the PyTorch model.
FLOAT_TOLERANCE = 1e-3


@dataclass
class OnnxConfig(TechniqueConfig):
    """Whether the exported graph is quantized, and how finely."""

    #: ONNX Runtime's dynamic int8 quantization (``quantize_dynamic``: int8 weights, activations per call); false
    #: exports the float32 graph.
    quantize: bool = True
    #: With ``quantize``: a weight scale per output channel (true) or one per weight matrix (false).
    per_channel: bool = True


def save_onnx(model, tokenizer, directory) -> None:
    """``model.onnx`` and ``config.json`` (the tokenizer and the model card are written beside them)."""
    model.save(directory)


ONNX = ExportFormat(
    "onnx",
    save_onnx,
    not_servable="vLLM does not serve ONNX: run it with tessera predict RUN_DIR FILE (ONNX Runtime)",
    usage=(
        "import onnxruntime",
        "from transformers import AutoTokenizer",
        'session = onnxruntime.InferenceSession("export/model.onnx")',
        'tokenizer = AutoTokenizer.from_pretrained("export")',
        'inputs = tokenizer(["a gripping film"], return_tensors="np")',
        "logits = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]",
    ),
)


class Onnx(Compressor):
    """Exports the classifier to an ONNX graph run by ONNX Runtime, int8 by default."""

    name = "onnx"
    Config = OnnxConfig
    terminal = True

    def validate(self, composition):
        from tessera.core.errors import ConfigError

        if composition.task != "sequence-classification":
            raise ConfigError(
                f"{self.label}: exports sequence classifiers only, not a {composition.task} model: "
                "use objective=classification, or compress=torchao"
            )

    def compress(self, model, context):
        import copy

        import numpy as np
        import torch

        from tessera.core.errors import TesseraError
        from tessera.core.onnx_model import OnnxClassifier, export_classifier, quantize_graph

        batch = next(context.calibration_batches(CHECK_SAMPLES, CHECK_SAMPLES))
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
        model = model.cpu().eval()
        with torch.inference_mode():
            expected = torch.softmax(model(**inputs).logits.float(), dim=-1).numpy()
        graph = export_classifier(model, inputs)
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]  # what transformers' save_pretrained records
        threads = torch.get_num_threads()
        exported = OnnxClassifier(graph, config, threads)
        float_probabilities = torch.softmax(exported(**inputs).logits, dim=-1).numpy()
        difference = float(np.abs(float_probabilities - expected).max())
        if difference > FLOAT_TOLERANCE:
            raise TesseraError(
                f"{self.label}: the ONNX graph's probabilities differ from the PyTorch model's by {difference:.2g} "
                f"(more than {FLOAT_TOLERANCE}): this model does not export faithfully; compress it otherwise"
            )
        details = {"quantized": self.config.quantize, "float_max_probability_difference": difference}
        if self.config.quantize:
            details["per_channel"] = self.config.per_channel
            exported = OnnxClassifier(quantize_graph(graph, self.config.per_channel), config, threads)
            quantized = torch.softmax(exported(**inputs).logits, dim=-1).numpy()
            details["int8_max_probability_difference"] = float(np.abs(quantized - float_probabilities).max())
            details["int8_agreement_with_float"] = float((quantized.argmax(1) == float_probabilities.argmax(1)).mean())
        details["checked_on"] = len(expected)
        return Compressed(exported, format=ONNX, details=details)
