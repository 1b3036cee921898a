"""compress=distill: the KD loss, the refusals before any training, and a two-stage teacher -> student job whose
smaller student export reloads and predicts as the run did."""

import json

import numpy as np
import pytest

from conftest import load_json, plugins, tessera

TINY = ["model=tiny", "data.limit_train=64", "data.limit_eval=32", "trainer.epochs=1", "trainer.num_threads=1"]


def test_identical_logits_give_no_kd_loss_and_only_the_student_gets_gradients():
    import torch

    from tessera.plugins.compressors.distill import distillation_loss

    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    assert distillation_loss(student, student.detach().clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    loss = distillation_loss(student.bfloat16(), teacher, 2.0)
    assert loss.dtype == torch.float32 and loss.item() > 0
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(student.bfloat16().float() / 2, -1), torch.softmax(teacher / 2, -1), reduction="batchmean"
    )
    assert loss.item() == pytest.approx(4 * expected.item(), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    # token logits: only the positions of the mask count
    tokens, other = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    masked = distillation_loss(tokens, other, 1.0, mask).item()
    assert masked == pytest.approx(distillation_loss(tokens[0, :2], other[0, :2], 1.0).item(), rel=1e-6)


def test_the_student_layers_match_the_teacher_layers_uniformly():
    from tessera.plugins.compressors.distill import layer_mapping
    from tessera.plugins.compressors.surgery import spread

    assert spread(3, 6) == [0, 2, 4]
    assert layer_mapping(3, 6) == [1, 3, 5] and layer_mapping(2, 2) == [0, 1] and layer_mapping(1, 4) == [3]


def tiny_classifier(directory, labels, tokenizer="minilm", hidden_size=64):
    """A random tiny classifier with the labels ``labels`` and the tokenizer of the asset ``tokenizer``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tessera.core.assets import asset_path

    source = asset_path(tokenizer)
    config = AutoConfig.from_pretrained(
        source,
        num_hidden_layers=2,
        hidden_size=hidden_size,
        num_attention_heads=2,
        intermediate_size=128,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def compose(overrides, earlier_stages=None, earlier_bases=None):
    from tessera.core.cli import compose_config
    from tessera.core.run import compose as compose_techniques

    cfg = compose_config([*TINY, *overrides], plugins())
    return compose_techniques(cfg, plugins(), earlier_stages, earlier_bases)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {
        "good": tiny_classifier(root / "good", ["negative", "positive"]),
        "labels": tiny_classifier(root / "labels", ["bad", "good"]),
        "narrow": tiny_classifier(root / "narrow", ["negative", "positive"], hidden_size=32),
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["compress=distill"], "compress=distill needs a teacher: compress.distill.teacher=STAGE"),
        (["compress=distill", "compress.distill.teacher=/nowhere"], "teacher=/nowhere is neither an earlier stage"),
        (["compress=distill", "compress.distill.teacher=stage_b"], "(earlier stages: stage_a)"),
        (["compress=distill", "compress.distill.teacher={asset}"], "has another tokenizer than"),
        (["compress=distill", "compress.distill.teacher={minilm}"], "is a BertModel, not a *ForSequenceClassification"),
        (["compress=distill", "compress.distill.teacher={labels}"], "predicts the labels bad, good and the data has"),
        (
            ["compress=distill", "compress.distill.teacher={good}", "compress.distill.layers=3"],
            "model=tiny has 2 layers",
        ),
        (
            ["compress=distill", "compress.distill.teacher={narrow}", "compress.distill.hidden_weight=1"],
            "the teacher's hidden size is 32 and the student's 64",
        ),
        (
            ["objective=mlm", "compress=distill", "compress.distill.teacher={good}"],
            "cannot be combined with the masked-lm task",
        ),
        (["compress=distill", "compress.distill.teacher={good}", "compress.distill.alpha=2"], "alpha=2.0 is outside"),
    ],
)
def test_bad_distillation_is_refused_in_one_line_before_training(teachers, overrides, message):
    from tessera.core.assets import asset_path
    from tessera.core.errors import ConfigError

    named = {**teachers, "asset": asset_path("smollm2"), "minilm": asset_path("minilm")}
    overrides = [override.format(**named) for override in overrides]
    with pytest.raises(ConfigError) as error:
        compose(overrides, {"stage_a": None}, {"stage_a": "asset:minilm"})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_stage_teacher_is_checked_before_its_export_exists():
    from tessera.core.errors import ConfigError

    overrides = ["compress=distill", "compress.distill.teacher=teacher"]
    compose(overrides, {"teacher": None}, {"teacher": "asset:minilm"})  # same base model: admitted
    with pytest.raises(ConfigError, match="has another tokenizer than model.pretrained=asset:minilm"):
        compose(overrides, {"teacher": None}, {"teacher": "asset:smollm2"})


def test_labels_inferred_from_the_data_are_checked_when_the_student_is_built(teachers, tmp_path):
    from tessera.core.cli import compose_config
    from tessera.core.errors import ConfigError
    from tessera.core.pipeline import prepare

    overrides = ["compress=distill", f"compress.distill.teacher={teachers['labels']}", "data.labels=[]"]
    cfg = compose_config([*TINY, *overrides], plugins())
    run, _ = prepare(cfg, tmp_path, plugins())  # the labels are known only after the data is read
    with pytest.raises(ConfigError, match="predicts the labels bad, good and the data has negative, positive"):
        run.composition.selected("compress")[0].prepare(None, run)


def test_the_distill_job_trains_a_smaller_student_that_reloads_and_predicts_as_the_run_did(tmp_path):
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = tmp_path / "run"
    layers = "model.config_overrides.num_hidden_layers=4"
    result = tessera("train", "experiment=distill", *TINY, layers, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    teacher_dir, student_dir = run_dir / "stages" / "teacher", run_dir / "stages" / "student"
    assert load_json(run_dir / "run.json")["status"] == "complete"
    assert load_json(student_dir / "run.json")["composition"] == {
        "objective": ["classification"],
        "compress": ["distill"],
    }
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir / "export")
    student = AutoModelForSequenceClassification.from_pretrained(student_dir / "export")
    assert teacher.config.num_hidden_layers == 4 and student.config.num_hidden_layers == 3
    compressed = load_json(student_dir / "metrics.json")["compression"]["compressed"]
    assert compressed["parameters"] == sum(p.numel() for p in student.parameters())
    assert compressed["parameters"] < sum(p.numel() for p in teacher.parameters())
    assert compressed["size_bytes"] == (student_dir / "export" / "model.safetensors").stat().st_size
    assert compressed["sentences_per_second"] > 0
    rows = [json.loads(line) for line in (student_dir / "predictions.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(student_dir / "export")
    max_length = OmegaConf.load(student_dir / "config.yaml").data.max_length
    texts = [row["text"] for row in rows]
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probabilities = torch.softmax(student.eval()(**batch).logits.float(), dim=-1).double().numpy()
    np.testing.assert_allclose(probabilities, [row["probabilities"] for row in rows], atol=1e-5)
    assert "| accuracy |" in (run_dir / "report.md").read_text()


def test_a_causal_lm_student_identical_to_its_teacher_starts_with_no_distillation_loss(tmp_path):
    """KD on token logits and hidden-state matching: a student that is its teacher (Llama: no dropout) has
    nothing to learn from it at the first step (the layer outputs before the final norm are matched, under the same
    autocast); the task term is off (alpha=1)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tessera.core.assets import asset_path
    from tessera.core.cli import compose_config
    from tessera.core.pipeline import execute, prepare

    teacher = tmp_path / "teacher"
    source = asset_path("smollm2")
    overrides = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2}
    config = AutoConfig.from_pretrained(source, intermediate_size=128, **overrides)
    AutoModelForCausalLM.from_config(config).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(source).save_pretrained(teacher)
    distill = ["compress=distill", f"compress.distill.teacher={teacher}", "compress.distill.alpha=1"]
    cfg = compose_config(
        [
            *TINY,
            "model=tiny_llama",
            f"model.pretrained={teacher}",
            "model.random_init=false",
            "objective=clm",
            "adapter=none",
            "trainer.max_steps=2",
            *distill,
            "compress.distill.hidden_weight=1",
        ],
        plugins(),
    )
    run, splits = prepare(cfg, tmp_path / "run", plugins())
    execute(run, splits)
    losses = [step["loss"] for step in load_json(run.dir / "metrics.json")["train"]]
    assert len(losses) == 2 and losses[0] < 1e-6
