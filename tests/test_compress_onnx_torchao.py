"""compress=torchao and compress=onnx end to end on the smoke run: the compression figures, the export reloaded by
what runs it (transformers; ONNX Runtime) predicting what the run predicted, tessera predict on both, and tessera
serve refusing both in one line that names tessera predict."""

import json

import numpy as np
import pytest

from conftest import load_json, plugins, tessera, trained_max_length
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.serving.target import ServeError

SMOKE = ["experiment=smoke", "data.limit_train=64", "data.limit_eval=32", "trainer.num_threads=1"]


def compressed_run(tmp_path_factory, *overrides):
    run_dir = tmp_path_factory.mktemp("compressed") / "run"
    result = tessera("train", *SMOKE, *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def torchao_run(tmp_path_factory):
    return compressed_run(tmp_path_factory, "compress=torchao", "compress.torchao.scheme=int8_dynamic")


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    return compressed_run(tmp_path_factory, "compress=onnx")


def run_predictions(run_dir):
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], np.array([row["probabilities"] for row in rows])


def classify(model, tokenizer, texts, max_length):
    """Class probabilities in one batch (the run's test split is one evaluation batch), padded as the run did."""
    import torch

    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return torch.softmax(model.eval()(**batch).logits.float(), dim=-1).double().numpy()


def predict_with_cli(run_dir, texts, tmp_path, *engine):
    from tessera.serving.cli import predict

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(texts) + "\n")
    assert predict([str(run_dir), str(inputs), *engine]) == 0
    rows = [json.loads(line) for line in (tmp_path / "inputs.predictions.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == texts
    return np.array([list(row["probabilities"].values()) for row in rows])


def test_torchao_export_reloads_quantized_and_predicts_what_the_run_predicted(torchao_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    compression = load_json(torchao_run / "metrics.json")["compression"]
    assert compression["format"] == "torchao" and not compression["servable"]
    assert "tessera predict" in compression["served_by"]
    assert compression["techniques"]["torchao"] == {
        "scheme": "int8_dynamic",
        "quantized_layers": 12,
        "float_layers": ["bert.pooler.dense", "classifier"],
    }
    assert compression["compressed"]["size_bytes"] < compression["uncompressed"]["size_bytes"]
    export = torchao_run / "export"
    assert json.loads((export / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert type(model.bert.encoder.layer[0].attention.self.query.weight).__name__ == "Int8Tensor"
    assert type(model.classifier.weight).__name__ == "Parameter"
    texts, expected = run_predictions(torchao_run)
    got = classify(model, AutoTokenizer.from_pretrained(export), texts, trained_max_length(torchao_run))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(predict_with_cli(torchao_run, texts, tmp_path), expected, atol=1e-4)


def test_onnx_export_runs_in_onnxruntime_and_predicts_what_the_run_predicted(onnx_run, tmp_path):
    from transformers import AutoTokenizer

    from tessera.core.onnx_model import OnnxClassifier

    compression = load_json(onnx_run / "metrics.json")["compression"]
    assert compression["format"] == "onnx" and not compression["servable"]
    details = compression["techniques"]["onnx"]
    assert details["quantized"] and details["per_channel"] and details["checked_on"] == 64
    assert details["float_max_probability_difference"] < 1e-4
    assert details["int8_agreement_with_float"] >= 0.9
    assert compression["compressed"]["size_bytes"] < compression["uncompressed"]["size_bytes"] / 3
    export = onnx_run / "export"
    assert (export / "model.onnx").is_file() and not list(export.glob("*.safetensors"))
    model = OnnxClassifier.from_directory(export, threads=1)  # as the run (trainer.num_threads=1): the same sums
    assert model.config.id2label == {0: "negative", 1: "positive"}
    texts, expected = run_predictions(onnx_run)
    got = classify(model, AutoTokenizer.from_pretrained(export), texts, trained_max_length(onnx_run))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # on every core: a float sum in another order may move an int8 activation by one step
    np.testing.assert_allclose(predict_with_cli(onnx_run, texts, tmp_path), expected, atol=1e-4)


def test_serve_refuses_torchao_and_onnx_exports_in_one_line_naming_predict(torchao_run, onnx_run):
    from tessera.serving.cli import predict, serve

    for run_dir, engine in ((torchao_run, "--engine transformers"), (onnx_run, "FILE")):
        with pytest.raises(ServeError) as caught:
            serve([str(run_dir)])
        message = str(caught.value)
        assert "\n" not in message and "vLLM does not serve" in message
        assert f"tessera predict {run_dir / 'export'} FILE" in message and engine in message
    with pytest.raises(ServeError, match="only ONNX Runtime runs: use --engine onnxruntime"):
        predict([str(onnx_run), str(onnx_run / "predictions.jsonl"), "--engine", "transformers"])


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["compress=torchao", "compress.torchao.scheme=int4"],
            ConfigError,
            "scheme=int4 is not one of int8_weight_only",
        ),
        (["model=tiny_llama", "objective=clm", "compress=onnx"], ConfigError, "exports sequence classifiers only"),
        (["compress=[onnx,magnitude_prune]"], IncompatibleError, "onnx's model cannot be compressed further"),
    ],
)
def test_compressors_that_cannot_run_are_refused_before_training(overrides, error, message):
    from tessera.core.cli import validate

    with pytest.raises(error) as caught:
        validate(["experiment=smoke", *overrides], plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)
