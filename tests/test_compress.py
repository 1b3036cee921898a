"""The compression engine: post-training compressors run on the merged model, the final model is evaluated again
and measured beside the uncompressed one, and the export is the final model."""

import json

import numpy as np
import pytest

from conftest import load_json, plugins
from tessera.core.cli import compose_config
from tessera.core.errors import ConfigError
from tessera.core.pipeline import execute, prepare

SMOKE = ["experiment=smoke", "data.limit_train=64", "data.limit_eval=48"]


def run_in_process(run_dir, overrides):
    """Run a smoke stage with ``overrides`` in ``run_dir``; return the directory and the max_length it used."""
    run, splits = prepare(compose_config([*SMOKE, *overrides], plugins()), run_dir, plugins())
    execute(run, splits)
    return run_dir, run.cfg.data.max_length


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """A tiny LoRA run whose merged model is pruned to 60 % sparsity."""
    return run_in_process(
        tmp_path_factory.mktemp("pruned") / "run",
        ["compress=magnitude_prune", "compress.magnitude_prune.sparsity=0.6", "compress.magnitude_prune.scope=layer"],
    )


def linear_sparsity(model) -> float:
    from tessera.plugins.compressors.surgery import layer_linears

    weights = [module.weight for _, module in layer_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_the_final_model_is_measured_beside_the_uncompressed_one(pruned_run):
    pruned_run, _ = pruned_run
    metrics = load_json(pruned_run / "metrics.json")
    compression = metrics["compression"]
    assert compression["chain"] == ["magnitude_prune"] and compression["format"] == "huggingface"
    assert compression["servable"] and compression["techniques"]["magnitude_prune"]["sparsity"] == 0.6
    before, after = compression["uncompressed"], compression["compressed"]
    assert before["sparsity"] < 0.01 and after["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert before["parameters"] == after["parameters"] > 0
    assert before["size_bytes"] > 0 and after["size_bytes"] > 0
    assert before["sentences_per_second"] > 0 and after["sentences_per_second"] > 0
    assert set(before["test"]) == set(metrics["test"]) and before["test"]["examples"] == 48
    assert "evaluate_compressed" in metrics["seconds"] and "compress" in metrics["seconds"]
    status = load_json(pruned_run / "run.json")
    assert status["test"] == metrics["test"]


def test_the_export_is_the_pruned_model_and_predicts_what_the_run_reported(pruned_run):
    """LoRA is merged before pruning, so its update cannot fill the zeros back in."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pruned_run, max_length = pruned_run
    export = pruned_run / "export"
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert linear_sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert not (export / "adapters").exists()
    rows = [json.loads(line) for line in (pruned_run / "predictions.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = tokenizer(
        [r["text"] for r in rows],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        probabilities = torch.softmax(model(**batch).logits, -1).double().numpy()
    np.testing.assert_allclose(probabilities, [r["probabilities"] for r in rows], atol=1e-5)
    card = (export / "README.md").read_text()
    assert "## Compression" in card and "| sparsity of linear weights | 0 | 0.6" in card


@pytest.mark.parametrize("sparsity", ["1.0", "-0.1"])
def test_a_sparsity_outside_zero_one_is_refused_before_any_work(sparsity):
    cfg = compose_config(
        [*SMOKE, "compress=magnitude_prune", f"compress.magnitude_prune.sparsity={sparsity}"], plugins()
    )
    with pytest.raises(ConfigError) as caught:
        prepare(cfg, None, plugins())
    assert str(caught.value) == (
        f"compress=magnitude_prune: sparsity={float(sparsity)} is outside [0, 1): give the fraction of weights to "
        "remove, e.g. 0.5"
    )
