"""The training speed-ups compute what they replace: fast dropout draws Bernoulli masks of the right rate from the
seed, the fused LoRA forward equals PEFT's (outputs and gradients), and both are undone after training."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tessera.core.speedups import fast_dropout, fused_lora, training_speedups  # noqa: E402


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    return BertForSequenceClassification(config)


def lora_model(dropout: float = 0.0):
    import peft

    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="SEQ_CLS")
    model = peft.get_peft_model(tiny_bert(), config)
    with torch.no_grad():  # PEFT starts B at zero: give the adapters something to add
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model


def test_fast_dropout_keeps_the_rate_scales_and_follows_the_seed():
    layer = torch.nn.Sequential(torch.nn.Dropout(0.1))
    undo = fast_dropout(layer)
    x = torch.ones(400, 1000)
    torch.manual_seed(3)
    first = layer(x)
    kept = first != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    assert torch.allclose(first[kept], torch.tensor(1 / 0.9))
    # every 16-bit slice of a draw takes part: each quarter of the positions drops at the same rate
    for offset in range(4):
        assert abs(kept.flatten()[offset::4].float().mean().item() - 0.9) < 0.005
    torch.manual_seed(3)
    assert torch.equal(layer(x), first)
    layer.eval()
    assert torch.equal(layer(x), x)
    undo()
    assert type(layer[0]) is torch.nn.Dropout


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_lora_forward_and_gradients_equal_pefts(autocast):
    reference, fused = lora_model(), lora_model()
    undo = fused_lora(fused)
    ids = torch.randint(0, 100, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    outputs = []
    for model in (reference, fused):
        model.eval()  # no dropout: the two draw no masks to compare
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits.float().sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        outputs.append((logits.float(), grads))
    tolerance = 3e-2 if autocast else 1e-5
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=tolerance, rtol=tolerance)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        assert torch.allclose(grad, outputs[1][1][name], atol=tolerance, rtol=tolerance), name
    undo()
    assert not any("forward" in vars(m) for m in fused.modules())


def test_fused_lora_leaves_layers_it_cannot_fuse_to_peft():
    model = lora_model()
    model.base_model.model.bert.encoder.layer[0].attention.self.query.merge()
    fused_lora(model)
    ids = torch.randint(0, 100, (2, 5))
    model(input_ids=ids)  # the merged layer falls back to PEFT's forward (which serves merged layers)


def test_training_speedups_follow_the_trainer_keys_and_are_undone():
    from types import SimpleNamespace

    model = lora_model(dropout=0.1)
    keys = SimpleNamespace(fast_dropout=True, fused_lora=True)
    with training_speedups(model, keys, "cpu"):
        assert any(type(m).__name__ == "FastDropout" for m in model.modules())
        assert any("forward" in vars(m) for m in model.modules())
    assert not any(type(m).__name__ == "FastDropout" for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    with training_speedups(model, SimpleNamespace(fast_dropout=True, fused_lora=False), "cuda"):
        assert not any(type(m).__name__ == "FastDropout" for m in model.modules())  # CPU only
        assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.slow
def test_a_compiled_run_trains_and_exports_the_plain_model(tmp_path):
    import json

    from safetensors import safe_open

    from conftest import tessera

    result = tessera(
        "train",
        "experiment=smoke",
        "data.limit_train=32",
        "data.limit_eval=16",
        "trainer.epochs=1",
        "trainer.compile=true",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    losses = [step["loss"] for step in json.loads((run / "metrics.json").read_text())["train"]]
    assert losses and all(loss == loss for loss in losses)  # no NaN
    with safe_open(str(run / "export" / "model.safetensors"), "pt") as weights:
        assert not [key for key in weights.keys() if "_orig_mod" in key]
