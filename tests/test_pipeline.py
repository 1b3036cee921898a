"""A complete composed run: artifacts, metrics, export that reloads and predicts what the trained model did."""

import json

import numpy as np
import pytest

from conftest import load_json, tessera, trained_max_length


def predictions(run_dir):
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], np.array([row["probabilities"] for row in rows])


def classify(model, tokenizer, texts, max_length):
    import torch

    model.eval()
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return torch.softmax(model(**batch).logits.float(), dim=-1).double().numpy()


def test_run_directory_holds_a_complete_run(smoke_run):
    status = load_json(smoke_run / "run.json")
    assert status["status"] == "complete"
    assert status["composition"] == {"objective": ["classification"], "adapter": ["lora"]}
    metrics = load_json(smoke_run / "metrics.json")
    test = metrics["test"]
    assert set(test) >= {"accuracy", "macro_f1", "precision", "recall", "roc_auc", "confusion_matrix"}
    assert test["examples"] == 160 and sum(map(sum, test["confusion_matrix"])) == 160
    assert len(metrics["train"]) == metrics["steps"] == 20 and len(metrics["validation"]) == 1
    for name in ("confusion_matrix.png", "roc_curve.png"):
        assert (smoke_run / name).read_bytes()[:4] == b"\x89PNG"
    assert "| accuracy |" in (smoke_run / "report.md").read_text()
    assert list((smoke_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (smoke_run / ".hydra" / "config.yaml").is_file()


def test_export_reloads_with_transformers_and_predicts_what_the_run_predicted(smoke_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    export = smoke_run / "export"
    assert (export / "model.safetensors").is_file() and not list(export.glob("*.bin"))
    card = (export / "README.md").read_text()
    assert "adapter: lora" in card and '"accuracy"' in card
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    texts, expected = predictions(smoke_run)
    got = classify(model, AutoTokenizer.from_pretrained(export), texts, trained_max_length(smoke_run))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_unmerged_peft_adapter_reproduces_the_predictions(smoke_run):
    from omegaconf import OmegaConf
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tessera.core.models import load_model

    adapter = smoke_run / "export" / "adapters" / "lora"
    assert (adapter / "adapter_config.json").is_file()
    cfg = OmegaConf.load(smoke_run / ".hydra" / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "export")
    base = load_model(cfg.model, "sequence-classification", ["negative", "positive"], tokenizer, cfg.trainer.seed)
    model = PeftModel.from_pretrained(base, adapter)
    texts, expected = predictions(smoke_run)
    np.testing.assert_allclose(classify(model, tokenizer, texts, cfg.data.max_length), expected, atol=1e-5)


def test_loss_falls_when_training_longer(tmp_path):
    result = tessera(
        "train",
        "experiment=smoke",
        "adapter=none",
        "data.limit_train=64",
        "trainer.epochs=15",
        "trainer.learning_rate=3e-3",
        "trainer.warmup_ratio=0",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [step["loss"] for step in load_json(tmp_path / "run" / "metrics.json")["train"]]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.5 * first, (first, last)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_the_same_run_on_cuda(tmp_path):
    result = tessera("train", "experiment=smoke", "trainer.device=cuda", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_json(tmp_path / "run" / "run.json")["status"] == "complete"


def test_an_export_transfers_its_encoder_to_data_with_other_labels(smoke_run, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "three.csv"
    data.write_text("text,label\n" + "".join(f"sentence number {i} of the set,{'abc'[i % 3]}\n" for i in range(60)))
    run = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "data=csv",
        f"data.path={data}",
        "trainer.epochs=0",
        f"model.pretrained={smoke_run / 'export'}",
        "model.random_init=false",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has a 2-label head and the data has 3 labels (a, b, c)" in result.stdout + result.stderr
    source = load_file(smoke_run / "export" / "model.safetensors")
    transferred = load_file(run / "export" / "model.safetensors")
    assert transferred["classifier.weight"].shape[0] == 3
    encoder = [name for name in source if not name.startswith("classifier")]
    assert encoder and all((source[name] == transferred[name]).all() for name in encoder)


def test_tensorboard_has_each_validation_curve_once_per_epoch_and_test_at_the_last_step(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(smoke_run / "tensorboard"))
    events.Reload()
    assert [scalar.step for scalar in events.Scalars("validation/accuracy")] == [1]  # epoch 1, written once
    assert [scalar.step for scalar in events.Scalars("test/accuracy")] == [20]
    assert len(events.Scalars("train/loss")) == 20
