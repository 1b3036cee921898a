"""Every adapter trains a tiny random BERT (real tokenizer, real sentences) through the real pipeline, in process:
the parameters that get gradients are exactly those the technique promises, they move and the others do not, and
the export predicts what the run predicted. Also: stacking order, the gradual-unfreezing schedule, layer-wise
learning rates in the optimizer groups, AdaLoRA's rank budget."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import load_json, plugins
from tessera import hookimpl
from tessera.core.cli import compose_config

#: 64 training sentences of at most 64 tokens (as `probabilities` cuts them) in batches of 16 for 2 epochs:
#: 8 optimizer steps.
RUN = ["experiment=smoke", "data.limit_train=64", "data.limit_eval=32", "trainer.epochs=2", "data.max_length=64"]
STEPS = 8
MULTI = "++adapter.multi_lora.adapters={attn: {target_modules: [query, value]}, ffn: {target_modules: [intermediate.dense], r: 4}}"

HEAD = r"^(base_model\.(model\.)?)?classifier\.(modules_to_save\.default\.)?(weight|bias)$"
#: What each technique promises to train at the first step, as a pattern over the parameter names.
PROMISES = {
    "none": r".",
    "lora": rf"\.lora_[AB]\.default\.weight$|{HEAD}",
    "dora": rf"\.lora_([AB]\.default\.weight|magnitude_vector\.default\.weight)$|{HEAD}",
    "adalora": rf"\.lora_[ABE]\.default$|{HEAD}",
    "ia3": rf"\.ia3_l\.default$|{HEAD}",
    "loha": rf"\.hada_w[12]_[ab]\.default$|{HEAD}",
    "lokr": rf"\.lokr_w[12](_[ab])?\.default$|{HEAD}",
    "prefix": rf"^prompt_encoder\.default\.embedding\.weight$|{HEAD}",
    "multi_lora": rf"(query|value)\.lora_[AB]\.attn\.weight$|intermediate\.dense\.lora_[AB]\.ffn\.weight$|{HEAD}",
    "freeze": r"^(bert\.encoder\.layer\.1\.|bert\.pooler\.|classifier\.)",
    "linear_probe": HEAD,
    "gradual_unfreeze": r"^(bert\.pooler\.|classifier\.)",
    "llrd": r".",
}
OVERRIDES = {"freeze": ["adapter.freeze.layers=1"], "multi_lora": [MULTI]}


class Recorder:
    """Hears a run's events: the parameters that got a gradient at each optimizer step, every parameter's value
    before the first step and after the last."""

    def __init__(self):
        self.trained: dict[int, set[str]] = {}
        self.parameters, self.initial, self.final = {}, {}, {}

    @hookimpl
    def tessera_before_optimizer_step(self, run, model, step):
        self.parameters = dict(model.named_parameters())
        self.trained[step] = {name for name, p in self.parameters.items() if p.grad is not None}
        if step == 1:
            self.initial = {name: p.detach().clone() for name, p in self.parameters.items()}

    @hookimpl(trylast=True)  # after the techniques' own step-end work (AdaLoRA masks its pruned ranks)
    def tessera_step_end(self, run, step, metrics):
        self.final = {name: p.detach().clone() for name, p in self.parameters.items()}


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """``train(*overrides)``: one complete in-process run (memoised) -> ``(run directory, recorder)``."""
    from tessera.core.pipeline import execute, prepare

    plugins()
    done = {}

    def run_with(*overrides):
        if overrides not in done:
            cfg = compose_config([*RUN, *overrides], plugins())
            run, splits = prepare(cfg, tmp_path_factory.mktemp("adapter") / "run", plugins())
            recorder = Recorder()
            run.composition.plugins.manager.register(recorder)
            execute(run, splits)
            done[overrides] = run.dir, recorder
        return done[overrides]

    return run_with


def predictions(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], np.array([row["probabilities"] for row in rows])


def probabilities(model, tokenizer, texts):
    import torch

    model.eval()
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
        return torch.softmax(model(**batch).logits.float(), dim=-1).double().numpy()


@pytest.mark.parametrize("adapter", sorted(PROMISES))
def test_adapter_trains_exactly_what_it_promises(train, adapter):
    run_dir, recorder = train(f"adapter={adapter}", *OVERRIDES.get(adapter, []))
    assert sorted(recorder.trained) == list(range(1, STEPS + 1))
    promised = {name for name in recorder.parameters if re.search(PROMISES[adapter], name)}
    assert recorder.trained[1] == promised and promised

    ever_trained = set().union(*recorder.trained.values())
    moved = {name for name in recorder.parameters if not recorder.initial[name].equal(recorder.final[name])}
    assert moved == ever_trained
    assert load_json(run_dir / "run.json")["status"] == "complete"


@pytest.mark.parametrize("adapter", sorted(set(PROMISES) - {"prefix"}))
def test_export_predicts_what_the_run_predicted(train, adapter):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _ = train(f"adapter={adapter}", *OVERRIDES.get(adapter, []))
    export = run_dir / "export"
    texts, expected = predictions(run_dir)
    model = AutoModelForSequenceClassification.from_pretrained(export)
    got = probabilities(model, AutoTokenizer.from_pretrained(export), texts)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_prefix_export_says_the_merged_model_lacks_the_prefixes_and_peft_reproduces_the_run(train):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tessera.core.models import load_model

    run_dir, _ = train("adapter=prefix")
    card = (run_dir / "export" / "README.md").read_text()
    assert "WITHOUT the learned prefixes" in card and "adapters/prefix cannot be served unmerged by vLLM" in card
    cfg = compose_config([*RUN, "adapter=prefix"], plugins())
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    base = load_model(cfg.model, "sequence-classification", ["negative", "positive"], tokenizer, cfg.trainer.seed)
    model = PeftModel.from_pretrained(base, run_dir / "export" / "adapters" / "prefix")
    texts, expected = predictions(run_dir)
    np.testing.assert_allclose(probabilities(model, tokenizer, texts), expected, atol=1e-4)


def test_multi_lora_exports_one_peft_directory_per_named_adapter(train):
    run_dir, _ = train("adapter=multi_lora", MULTI)
    adapters = run_dir / "export" / "adapters" / "multi_lora"
    targets = {name: load_json(adapters / name / "adapter_config.json")["target_modules"] for name in ("attn", "ffn")}
    assert sorted(targets["attn"]) == ["query", "value"] and targets["ffn"] == ["intermediate.dense"]
    assert "the named adapters were trained together" in (run_dir / "export" / "README.md").read_text()


def test_stacking_acts_in_config_order(train):
    _, recorder = train("adapter=[lora,freeze]", "adapter.freeze.layers=1")
    trained = recorder.trained[1]
    assert trained and all(".layer.0." not in name for name in trained)
    assert {name for name in trained if "lora_" in name} == {
        name for name in recorder.parameters if "lora_" in name and ".layer.0." not in name
    }


def test_gradual_unfreezing_follows_its_schedule(train):
    _, recorder = train("adapter=gradual_unfreeze")  # 2 layers: 4 stages of 2 steps
    lowest = {step: min(depth_of(name) for name in names) for step, names in recorder.trained.items()}
    assert lowest == {1: 3, 2: 3, 3: 2, 4: 2, 5: 1, 6: 1, 7: 0, 8: 0}
    assert recorder.trained[8] == set(recorder.parameters)


def depth_of(name: str) -> int:
    from tessera.plugins.adapters.layers import depth

    return depth(name, layers=2)


def test_layerwise_decay_sets_the_learning_rate_of_each_optimizer_group(tmp_path):
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.run import Run, compose
    from tessera.core.trainer import _param_groups

    plugins()
    cfg = compose_config(["experiment=smoke", "adapter=[lora,llrd]", "adapter.llrd.decay=0.5"], plugins())
    composition = compose(cfg, plugins())
    run = Run(composition, tmp_path)
    model = load_model(cfg.model, composition.task, ["negative", "positive"], load_tokenizer(cfg.model), 0)
    for adapter in composition.selected("adapter"):
        model = adapter.apply(model, run)
    groups = _param_groups(model, 1e-3, 0.01, composition.selected("adapter"))
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    by_depth = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            by_depth.setdefault(depth_of(name), set()).add(rate[id(parameter)])
    assert by_depth == {1: {2.5e-4}, 2: {5e-4}, 3: {1e-3}}


def test_adalora_prunes_its_ranks_to_the_budget(train):
    run_dir, recorder = train("adapter=adalora")
    singular = {name: value for name, value in recorder.final.items() if ".lora_E." in name}
    pruned = sum(int((value == 0).sum()) for value in singular.values())
    assert pruned == (12 - 8) * len(singular)  # init_r 12 -> target_r 8 on average
    saved = load_json(run_dir / "export" / "adapters" / "adalora" / "adapter_config.json")
    assert sum(map(sum, saved["rank_pattern"].values())) == 8 * len(singular)


def test_lora_loss_falls_on_a_batch_it_sees_again_and_again(train):
    overrides = ("data.limit_train=16", "trainer.epochs=30", "trainer.learning_rate=1e-2", "trainer.warmup_ratio=0")
    run_dir, _ = train("adapter=lora", *overrides)
    losses = [step["loss"] for step in load_json(run_dir / "metrics.json")["train"]]
    assert np.median(losses[-10:]) < 0.5 * np.mean(losses[:3]), losses


def test_decoder_lora_run_exports_an_adapter_vllm_serves_unmerged(train):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tessera.core.models import load_model

    overrides = ("model=tiny_llama", "objective=clm", "adapter=lora", "adapter.lora.r=8")
    run_dir, recorder = train(*overrides)
    assert recorder.trained[1] and all(".lora_" in name for name in recorder.trained[1])
    adapter = run_dir / "export" / "adapters" / "lora"
    config = load_json(adapter / "adapter_config.json")
    assert config["task_type"] == "CAUSAL_LM" and not config["modules_to_save"] and not config["use_dora"]
    card = (run_dir / "export" / "README.md").read_text()
    assert "adapters/lora is served unmerged by vLLM: --enable-lora --lora-modules lora=export/adapters/lora" in card

    cfg = compose_config([*RUN, *overrides], plugins())
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export")
    base = load_model(cfg.model, "causal-lm", [], tokenizer, cfg.trainer.seed)
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "export").eval()
    batch = tokenizer(["A film of rare beauty."], return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(unmerged(**batch).logits, merged(**batch).logits, atol=1e-4, rtol=1e-4)
