"""The pruning compressors: structured surgery on tiny random BERT and Llama models (the pruned model predicts as
the original with the removed structures zeroed, and reloads from its export to the same logits), the gradual
schedule, one-line refusals before any work, and smoke runs: gradual_prune to its exact sparsity and through a
resume, structured_prune (Taylor importance) chained with magnitude_prune, its export reloaded by transformers
and served by vLLM like the run predicted; 2:4 sparsity on a CUDA GPU."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from conftest import load_json, plugins, tessera, trained_max_length
from tessera import hookimpl

SMOKE = ["experiment=smoke", "data.limit_train=64", "trainer.num_threads=1"]


def tiny_bert(layers: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=128
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    return LlamaForCausalLM(config).eval()


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def reloaded(model, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    model.save_pretrained(tmp_path, safe_serialization=True)
    auto = {"bert": AutoModelForSequenceClassification, "llama": AutoModelForCausalLM}.get(
        model.config.model_type, AutoModel
    )
    return auto.from_pretrained(tmp_path).eval()


def structured(**parameters):
    from tessera.plugins.compressors.structured_prune import StructuredPrune, StructuredPruneConfig

    return StructuredPrune(StructuredPruneConfig(**parameters))


def weaken(linear, rows=None, columns=None, factor=1e-3):
    """Make some rows / columns of a linear weight the least important by far."""
    with torch.no_grad():
        if rows is not None:
            linear.weight[rows] *= factor
        if columns is not None:
            linear.weight[:, columns] *= factor


def test_bert_ffn_neurons_and_a_layer_are_removed_and_the_export_reloads_to_the_same_logits(tmp_path):
    model = tiny_bert()
    weak = list(range(0, 128, 4))  # 32 neurons per layer: ffn_sparsity 0.25 removes exactly these
    for layer in model.bert.encoder.layer:
        weaken(layer.intermediate.dense, rows=weak)
        weaken(layer.output.dense, columns=weak)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer in reference.bert.encoder.layer:
            layer.intermediate.dense.weight[weak] = 0
            layer.intermediate.dense.bias[weak] = 0  # GELU(0) = 0: the neuron contributes nothing
    del reference.bert.encoder.layer[1]
    ids = torch.randint(0, 120, (3, 9))

    result = structured(ffn_sparsity=0.25, drop_layers=[1]).compress(model, None)

    pruned = result.model
    assert result.details["intermediate_size"] == [128, 96] and result.details["layers_removed"] == [1]
    assert pruned.config.num_hidden_layers == 2 and pruned.config.intermediate_size == 96
    assert [tuple(layer.output.dense.weight.shape) for layer in pruned.bert.encoder.layer] == [(64, 96)] * 2
    torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(reloaded(pruned, tmp_path), ids), logits(pruned, ids), atol=0, rtol=0)


def test_llama_kv_groups_and_ffn_neurons_are_removed_and_the_export_reloads_to_the_same_logits(tmp_path):
    model = tiny_llama()
    weak_neurons = list(range(1, 128, 2))
    for layer in model.model.layers:
        attention = layer.self_attn
        # group 0 (key-value head 0 and query heads 0, 1) is the weak one: head_dim 16
        weaken(attention.k_proj, rows=list(range(16)))
        weaken(attention.v_proj, rows=list(range(16)))
        weaken(attention.q_proj, rows=list(range(32)))
        weaken(attention.o_proj, columns=list(range(32)))
        for projection in (layer.mlp.gate_proj, layer.mlp.up_proj):
            weaken(projection, rows=weak_neurons)
        weaken(layer.mlp.down_proj, columns=weak_neurons)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer in reference.model.layers:
            layer.self_attn.o_proj.weight[:, :32] = 0  # the removed group's heads reach nothing
            layer.mlp.gate_proj.weight[weak_neurons] = 0  # SiLU(0) * up = 0
    ids = torch.randint(0, 120, (2, 11))

    result = structured(ffn_sparsity=0.5, kv_heads=1).compress(model, None)

    pruned, config = result.model, result.model.config
    assert result.details["attention_heads"] == [4, 2] and result.details["kv_heads"] == 1
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    assert config.intermediate_size == 64
    attention = pruned.model.layers[0].self_attn
    assert tuple(attention.q_proj.weight.shape) == (32, 64) and tuple(attention.k_proj.weight.shape) == (16, 64)
    assert tuple(attention.o_proj.weight.shape) == (64, 32)
    torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), atol=1e-5, rtol=0)
    again = reloaded(pruned, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["head_dim"] == 16
    torch.testing.assert_close(logits(again, ids), logits(pruned, ids), atol=0, rtol=0)


def test_a_count_of_layers_drops_the_top_ones():
    model = tiny_bert()
    kept = [model.bert.encoder.layer[0]]
    result = structured(drop_layers=2).compress(model, None)
    assert result.details["layers_removed"] == [1, 2]
    assert list(result.model.bert.encoder.layer) == kept


def test_the_gradual_schedule_is_zhu_and_gupta_cubic():
    from tessera.plugins.compressors.gradual_prune import GradualPrune, GradualPruneConfig

    pruner = GradualPrune(GradualPruneConfig(sparsity=0.8, initial_sparsity=0.1, start=0.1, end=0.5, every=10))
    pruner.total_steps = 200  # pruning steps 20..100, every 10
    assert [step for step in range(1, 201) if pruner.is_update(step)] == list(range(20, 101, 10))
    assert pruner.sparsity_at(19) == 0.0 and pruner.sparsity_at(20) == pytest.approx(0.1)
    assert pruner.sparsity_at(45) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - 20 / 80) ** 3)  # at the step-40 update
    assert pruner.sparsity_at(100) == pruner.sparsity_at(200) == 0.8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["compress=gradual_prune", "adapter=none", "compress.gradual_prune.sparsity=1.0"], "sparsity=1.0 is outside"),
        (
            ["compress=gradual_prune"],
            "compress=gradual_prune cannot be combined with adapter=lora: gradual_prune prunes the trained weights",
        ),
        (["compress=structured_prune", "compress.structured_prune.ffn_sparsity=-0.1"], "ffn_sparsity=-0.1 is outside"),
        (["compress=structured_prune", "compress.structured_prune.drop_layers=2"], "removes all 2 layers"),
        (["compress=structured_prune", "compress.structured_prune.drop_layers=[0,5]"], "outside 0..1"),
        (["compress=structured_prune", "compress.structured_prune.importance=random"], "importance=random is not"),
        (
            ["compress=structured_prune", "compress.structured_prune.kv_heads=1"],
            "bert's attention heads cannot be removed and reloaded",
        ),
        (
            ["model=tiny_llama", "objective=clm", "compress=structured_prune", "compress.structured_prune.kv_heads=3"],
            "kv_heads=3 must be between 1 and the model's 2 key-value heads",
        ),
        (["compress=semi_structured", "trainer.device=cpu"], "compress=semi_structured needs a CUDA GPU"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_work(overrides, message):
    from tessera.core.cli import compose_config
    from tessera.core.errors import ConfigError
    from tessera.core.run import compose

    with pytest.raises(ConfigError) as caught:
        compose(compose_config(["experiment=smoke", *overrides], plugins()), plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def layer_weights(export):
    from transformers import AutoModelForSequenceClassification

    from tessera.plugins.compressors.surgery import layer_linears

    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    return model, [module.weight for _, module in layer_linears(model)]


def predicted(run_dir) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], np.array([row["probabilities"] for row in rows])


def transformers_probabilities(run_dir, texts, max_length: int):
    from transformers import AutoTokenizer

    model, _ = layer_weights(run_dir / "export")
    batch = AutoTokenizer.from_pretrained(run_dir / "export")(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return torch.softmax(model(**batch).logits, dim=-1).double().numpy()


class Interrupt:
    """Stops a run with Ctrl-C at the end of an optimizer step (after the checkpoint of the step before)."""

    def __init__(self, step: int):
        self.step = step

    @hookimpl
    def tessera_step_end(self, step):
        if step == self.step:
            raise KeyboardInterrupt


def train_in_process(overrides, run_dir, interrupt_at=None):
    """Run ``tessera train OVERRIDES`` in this process (its imports shared); return the run."""
    from tessera.core.cli import compose_config
    from tessera.core.pipeline import execute, prepare

    run, splits = prepare(compose_config(overrides, plugins()), run_dir, plugins())
    if interrupt_at is None:
        execute(run, splits)
        return run
    stopper = Interrupt(interrupt_at)
    run.composition.plugins.manager.register(stopper)
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(run, splits)
    finally:
        run.composition.plugins.manager.unregister(stopper)


GRADUAL = [
    *SMOKE,
    "adapter=none",
    "compress=gradual_prune",
    "trainer.epochs=2",  # 8 optimizer steps; mask updates at 1, 4 and 6 (end=0.75)
    "trainer.checkpoint_every=2",
    "compress.gradual_prune.every=3",
]


def test_gradual_prune_trains_to_the_exact_sparsity_and_resumes_to_the_same_result(tmp_path):
    straight = tmp_path / "straight"
    run = train_in_process(GRADUAL, straight)
    metrics = load_json(straight / "metrics.json")
    record = metrics["compression"]
    assert record["techniques"]["gradual_prune"]["steps"] == [1, 6]
    assert record["techniques"]["gradual_prune"]["mask_updates"] == 3
    assert record["compressed"]["sparsity"] == pytest.approx(0.5, abs=0.005)  # over the layers, heads not counted
    _, weights = layer_weights(straight / "export")
    assert [float((weight == 0).float().mean()) for weight in weights] == [0.5] * len(weights)
    texts, probabilities = predicted(straight)
    np.testing.assert_allclose(
        transformers_probabilities(straight, texts, run.cfg.data.max_length), probabilities, atol=1e-5
    )

    resumed = tmp_path / "resumed"
    # stopped at step 5: resumes from the step-4 checkpoint, with the masks of step 4 derived from the weights
    train_in_process(GRADUAL, resumed, interrupt_at=5)
    assert not (resumed / "metrics.json").exists()
    train_in_process([*GRADUAL, "resume=true"], resumed)
    losses = [[step["loss"] for step in load_json(run / "metrics.json")["train"]] for run in (straight, resumed)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    np.testing.assert_allclose(predicted(resumed)[1], probabilities, atol=1e-6)


def test_structured_prune_chained_with_magnitude_prune_exports_a_smaller_model_vllm_serves(tmp_path):
    run_dir = tmp_path / "run"
    trained = tessera(
        "train",
        *SMOKE,
        "compress=[structured_prune,magnitude_prune]",
        "compress.structured_prune.ffn_sparsity=0.5",
        "compress.structured_prune.drop_layers=1",
        "compress.structured_prune.importance=taylor",
        f"hydra.run.dir={run_dir}",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = load_json(run_dir / "metrics.json")["compression"]
    assert record["techniques"]["structured_prune"]["intermediate_size"] == [128, 64]
    assert record["techniques"]["structured_prune"]["layers"] == [2, 1]
    before, after = record["uncompressed"], record["compressed"]
    layer = 4 * (64 * 64 + 64) + 2 * 2 * 64 + (64 * 128 + 128) + (128 * 64 + 64)  # attention, norms, FFN
    half_ffn = (64 * 64 + 64) + 64 * 64  # 64 rows of intermediate.dense with their biases, 64 output columns
    assert before["parameters"] - after["parameters"] == layer + half_ffn
    assert after["size_bytes"] < before["size_bytes"]
    model, weights = layer_weights(run_dir / "export")
    assert model.config.num_hidden_layers == 1 and model.config.intermediate_size == 64
    assert 0.45 < float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights)) < 0.55
    texts, probabilities = predicted(run_dir)
    np.testing.assert_allclose(
        transformers_probabilities(run_dir, texts, trained_max_length(run_dir)), probabilities, atol=1e-5
    )

    inputs = tmp_path / "reviews.csv"
    with inputs.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *[[i, text] for i, text in enumerate(texts[:16])]])
    result = tessera("predict", str(run_dir), str(inputs), "--output", str(tmp_path / "served.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "16 predictions (vllm)" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "served.jsonl").read_text().splitlines()]
    served = [[row["probabilities"]["negative"], row["probabilities"]["positive"]] for row in rows]
    np.testing.assert_allclose(served, probabilities[:16], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured sparsity needs a CUDA GPU")
def test_semi_structured_runs_the_sparse_kernels_and_exports_the_two_four_zeros(tmp_path):
    from torch.sparse import SparseSemiStructuredTensor
    from transformers import BertConfig, BertForSequenceClassification

    from tessera.plugins.compressors.semi_structured import SemiStructured, two_four_mask
    from tessera.plugins.compressors.surgery import layer_linears

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=120, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    ).eval()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    reference = copy.deepcopy(model).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        for _, module in layer_linears(reference):
            module.weight.mul_(two_four_mask(module.weight))
    ids = torch.randint(0, 120, (4, 16), device="cuda")

    result = SemiStructured(SemiStructured.Config()).compress(model, None)

    linears = [module for _, module in layer_linears(result.model)]
    assert all(isinstance(module.weight, SparseSemiStructuredTensor) for module in linears)
    assert result.details["sparse"] == len(linears)
    torch.testing.assert_close(logits(result.model, ids).float(), logits(reference, ids).float(), atol=2e-2, rtol=2e-2)
    result.format.save(result.model, None, tmp_path)
    again = reloaded_classifier(tmp_path)
    for _, module in layer_linears(again):
        groups = (module.weight.reshape(-1, 4) == 0).sum(dim=1)
        assert bool((groups >= 2).all())
    torch.testing.assert_close(
        logits(again.to("cuda"), ids).float(), logits(reference, ids).float(), atol=2e-2, rtol=2e-2
    )


def reloaded_classifier(directory):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(directory).eval()
