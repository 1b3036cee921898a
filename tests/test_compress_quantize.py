"""``compress=quantize`` (round to nearest through compressed-tensors): bad input refused before any work; the
export reloads in transformers and predicts as the in-memory quantized model; a smoke run's W8A8 classifier is
measured in metrics.json, reloads like its predictions.jsonl and is served by vLLM; a tiny Llama's W4A16 run.
``method=smoothquant`` and ``gptq`` (llm-compressor, in an environment built on first use) are not run here: they
would build that environment."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from safetensors import safe_open

from conftest import REPO, load_json, plugins, tessera, trained_max_length
from tessera.core.cli import validate
from tessera.core.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def hydra_store():
    plugins()


# --- bad input, refused while the composition is validated -----------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["compress.quantize.scheme=W8A16"], "compress=quantize: scheme=W8A16 is not one of W8A8, W4A16"),
        (["compress.quantize.method=awq"], "compress=quantize: method=awq is not one of rtn, smoothquant, gptq"),
        (
            ["compress.quantize.method=smoothquant", "compress.quantize.scheme=W4A16"],
            "method=smoothquant smooths activations for W8A8: use scheme=W8A8",
        ),
        (
            ["compress.quantize.scheme=W4A16", "compress.quantize.group_size=48"],
            "compress=quantize group_size=48 cannot be combined with model=tiny: its hidden_size (64) is not a "
            "multiple of the group size; choose group_size=64",
        ),
        (
            ["model=tiny_llama", "compress.quantize.scheme=W4A16", "compress.quantize.group_size=128"],
            "with model=tiny_llama: its hidden_size (64)",
        ),
        (
            ["model=smollm2", "compress.quantize.scheme=W4A16", "compress.quantize.group_size=128"],
            "with model=smollm2: its hidden_size (576) is not a multiple of the group size; choose group_size=64",
        ),
        (
            ["compress.quantize.method=smoothquant"],
            "compress=quantize method=smoothquant cannot be combined with model=tiny: llm-compressor's SmoothQuant "
            "smooths Llama-style layers (input_layernorm -> q/k/v_proj), which BertForSequenceClassification lacks",
        ),
        (
            ["compress.quantize.method=gptq", "compress.quantize.calibration_samples=0"],
            "compress=quantize: calibration_samples=0 must be at least 1",
        ),
        (["compress=[quantize,magnitude_prune]"], "quantize's model cannot be compressed further: put it last"),
    ],
)
def test_bad_input_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as caught:
        validate(["experiment=smoke", "compress=quantize", *overrides], plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_workable_settings_are_accepted():
    for model, group_size in [("tiny", 64), ("tiny_llama", 32), ("smollm2", 64)]:
        overrides = [f"model={model}", "compress.quantize.scheme=W4A16", f"compress.quantize.group_size={group_size}"]
        validate(["experiment=smoke", "compress=quantize", *overrides], plugins())
    smoothquant = ["model=tiny_llama", "objective=clm", "compress.quantize.method=smoothquant"]
    validate(["experiment=smoke", "compress=quantize", *smoothquant], plugins())


# --- the export of a quantized model, in process ----------------------------------------------------------------


def tiny_llama():
    """The tiny random Llama of ``model=tiny_llama`` and its tokenizer."""
    from tessera.core.models import load_model, load_tokenizer

    model_cfg = OmegaConf.load(REPO / "tessera" / "conf" / "model" / "tiny_llama.yaml")
    tokenizer = load_tokenizer(model_cfg)
    return load_model(model_cfg, "causal-lm", [], tokenizer, seed=0).eval(), tokenizer


@pytest.mark.parametrize("scheme, weight, dtype", [("W8A8", "weight", "I8"), ("W4A16", "weight_packed", "I32")])
def test_the_export_reloads_and_predicts_as_the_quantized_model(tmp_path, scheme, weight, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from tessera.plugins.compressors.quantize import round_to_nearest, save_compressed_tensors

    model, tokenizer = tiny_llama()
    ids = tokenizer(["the film is a triumph of style over substance", "dull"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        dense = model(**ids).logits
        quantized = round_to_nearest(model, scheme, group_size=32)
        fake = quantized(**ids).logits
    assert (fake - dense).abs().max() > 1e-3, "the quantized model predicts differently from the dense one"
    save_compressed_tensors(quantized, tokenizer, tmp_path)

    config = load_json(tmp_path / "config.json")["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["ignore"] == ["lm_head"]
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        projection = "model.layers.1.mlp.down_proj"
        assert weights.get_slice(f"{projection}.{weight}").get_dtype() == dtype
        scales = weights.get_slice(f"{projection}.weight_scale").get_shape()
    assert scales == ([64, 1] if scheme == "W8A8" else [64, 128 // 32])
    assert "model.embed_tokens.weight" in names and not any(name.startswith("lm_head") for name in names)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        logits = reloaded(**ids).logits
    torch.testing.assert_close(logits, fake, atol=1e-5, rtol=0)


# --- a smoke run: W8A8 classifier, measured, reloaded, served -----------------------------------------------------


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quantize") / "run"
    result = tessera(
        "train", "experiment=smoke", "compress=quantize", "trainer.num_threads=1", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def predicted(quantized_run):
    rows = [json.loads(line) for line in (quantized_run / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], np.array([row["probabilities"] for row in rows])


def test_metrics_give_the_quantized_model_beside_the_dense_one(quantized_run):
    metrics = load_json(quantized_run / "metrics.json")
    compression = metrics["compression"]
    assert compression["format"] == "compressed-tensors" and compression["servable"]
    assert compression["techniques"] == {"quantize": {"scheme": "W8A8", "method": "rtn", "quantized_layers": 12}}
    uncompressed, compressed = compression["uncompressed"], compression["compressed"]
    assert compressed["size_bytes"] < uncompressed["size_bytes"]
    # 12 linear layers of 64x64 or 64x128 float32 weights become int8: 3/4 of 4 * 2 * 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert uncompressed["size_bytes"] - compressed["size_bytes"] > 0.7 * 3 * 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert metrics["test"]["loss"] != uncompressed["test"]["loss"], "the final evaluation is the quantized model's"
    assert compressed["sentences_per_second"] > 0


def test_the_export_reloads_in_transformers_and_predicts_like_the_run(quantized_run, predicted):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    export = quantized_run / "export"
    config = load_json(export / "config.json")["quantization_config"]
    assert config["format"] == "int-quantized" and config["ignore"] == ["bert.pooler.dense", "classifier"]
    texts, expected = predicted
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    batch = AutoTokenizer.from_pretrained(export)(
        texts, truncation=True, max_length=trained_max_length(quantized_run), padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        probabilities = torch.softmax(model(**batch).logits, dim=-1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


#: How far vLLM's bfloat16 probabilities of the W8A8 classifier may be from the run's float32 ones (measured:
#: 5.6e-5 on an AMX CPU, 2026-12-03).
BF16_TOLERANCE = 5e-4


def test_vllm_predicts_like_the_run(quantized_run, predicted, tmp_path):
    texts, expected = predicted[0][:48], predicted[1][:48]
    inputs = tmp_path / "reviews.csv"
    with inputs.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *[[i, text] for i, text in enumerate(texts)]])
    result = tessera("predict", str(quantized_run), str(inputs), "--engine", "vllm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "48 predictions (vllm)" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "reviews.predictions.jsonl").read_text().splitlines()]
    got = np.array([[row["probabilities"]["negative"], row["probabilities"]["positive"]] for row in rows])
    from tessera.core.config import ServeConfig
    from tessera.serving.settings import dtype_for

    # measured: 6e-6 from the in-memory quantized model in float32 (int8 kernels against quantize-dequantize);
    # on a CPU with AMX vLLM serves W8A8 in bfloat16 (its AMX int8 kernel): within BF16_TOLERANCE there
    float32 = dtype_for(ServeConfig(), "classify", quantized_run / "export") == "float32"
    np.testing.assert_allclose(got, expected, atol=3e-5 if float32 else BF16_TOLERANCE)


# --- a causal language model: W4A16 ---------------------------------------------------------------------------


def test_a_causal_lm_run_exports_w4a16_that_reloads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "model=tiny_llama",
        "objective=clm",
        "compress=quantize",
        "compress.quantize.scheme=W4A16",
        "compress.quantize.group_size=32",
        "data.limit_train=32",
        "data.limit_eval=16",
        "data.max_length=32",
        "trainer.num_threads=1",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = load_json(run_dir / "metrics.json")
    compression = metrics["compression"]
    assert compression["techniques"]["quantize"] == {
        "scheme": "W4A16",
        "method": "rtn",
        "group_size": 32,
        "quantized_layers": 14,
    }
    assert compression["compressed"]["size_bytes"] < compression["uncompressed"]["size_bytes"]
    config = load_json(run_dir / "export" / "config.json")["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert config["format"] == "pack-quantized" and (weights["num_bits"], weights["group_size"]) == (4, 32)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    ids = tokenizer(["the film is"], return_tensors="pt")
    with torch.inference_mode():
        loss = model(**ids, labels=ids.input_ids).loss
    # a random 49152-token model: near log(49152) = 10.8, as the run's own test loss
    assert abs(float(loss) - metrics["test"]["loss"]) < 0.5
    # vLLM's CPU kernel for 4-bit weights computes in bfloat16 only: serving picks it, and refuses float32
    from tessera.core.config import ServeConfig
    from tessera.core.errors import ConfigError
    from tessera.serving.settings import dtype_for

    assert dtype_for(ServeConfig(), "classify", run_dir / "export") == "bfloat16"
    with pytest.raises(ConfigError, match="runs in bfloat16 only: drop dtype=float32"):
        dtype_for(ServeConfig(dtype="float32"), "generate", run_dir / "export")
