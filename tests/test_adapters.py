"""Adapters without a training run: registration, where parameters sit, bad input refused before any work, and the
unmerged export of a decoder LoRA adapter (a tiny random Llama with the real SmolLM2 tokenizer)."""

import json
from types import SimpleNamespace

import pytest

from conftest import plugins, tessera
from tessera.core.cli import validate
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.plugins.adapters.layers import depth, is_within, layer_count

ADAPTERS = [
    "adalora",
    "dora",
    "freeze",
    "gradual_unfreeze",
    "ia3",
    "linear_probe",
    "llrd",
    "loha",
    "lokr",
    "lora",
    "multi_lora",
    "prefix",
]


@pytest.fixture(autouse=True, scope="module")
def hydra_store():
    plugins()


def test_every_adapter_is_listed_by_tessera_plugins():
    result = tessera("plugins", "--json")
    assert result.returncode == 0, result.stderr
    techniques = json.loads(result.stdout)["techniques"]
    assert sorted(techniques["adapter"]) == ADAPTERS


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bert.embeddings.word_embeddings.weight", 0),
        ("bert.encoder.layer.0.attention.self.query.weight", 1),
        ("base_model.model.bert.encoder.layer.1.output.dense.lora_A.default.weight", 2),
        ("bert.pooler.dense.weight", 3),
        ("classifier.weight", 3),
        ("model.embed_tokens.weight", 0),
        ("model.layers.1.mlp.down_proj.weight", 2),
        ("model.norm.weight", 3),
        ("transformer.h.0.attn.c_attn.weight", 1),
    ],
)
def test_depth_of_a_parameter_from_its_name(name, expected):
    assert depth(name, layers=2) == expected


def test_layer_count_and_module_membership():
    assert layer_count(["a.layer.0.x", "a.layer.5.y", "embeddings.w"]) == 6 and layer_count(["head.w"]) == 0
    assert is_within("base_model.model.classifier.modules_to_save.default.weight", ["classifier"])
    assert is_within("cls.predictions.bias", ["cls.predictions"]) and not is_within("precls.weight", ["cls"])


# --- bad input, refused while the composition is validated -----------------------------------------------------


@pytest.mark.parametrize("adapter", ["lora", "dora", "adalora", "loha", "lokr", "ia3"])
def test_targets_the_model_lacks_are_refused_naming_both(adapter):
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", f"adapter={adapter}", f"adapter.{adapter}.target_modules=[q_proj]"], plugins())
    message = str(caught.value)
    assert f"adapter={adapter}" in message and "model=tiny" in message
    assert "no modules named ['q_proj']" in message and "query" in message and "\n" not in message


def test_multi_lora_checks_the_targets_of_each_named_adapter():
    with pytest.raises(IncompatibleError, match=r"adapter\.multi_lora\.adapters\.ffn\.target_modules"):
        validate(
            [
                "experiment=smoke",
                "adapter=multi_lora",
                "++adapter.multi_lora.adapters={attn: {target_modules: [query]}, ffn: {target_modules: [mlp]}}",
            ],
            plugins(),
        )
    with pytest.raises(ConfigError, match="adapter=multi_lora needs its adapters"):
        validate(["experiment=smoke", "adapter=multi_lora"], plugins())


def test_adalora_without_a_step_budget_is_refused_naming_both():
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", "adapter=adalora", "trainer.epochs=0"], plugins())
    message = str(caught.value)
    assert message.startswith("adapter=adalora cannot be combined with trainer.epochs=0") and "step" in message


def test_adalora_refuses_a_run_without_planned_steps_when_applied():
    from tessera.plugins.adapters.adalora import AdaLora

    adapter = AdaLora(AdaLora.Config())
    run = SimpleNamespace(composition=SimpleNamespace(task="sequence-classification"), total_steps=0)
    with pytest.raises(IncompatibleError, match="adapter=adalora cannot be combined with a run without planned"):
        adapter.apply(object(), run)


def test_prefix_tuning_is_refused_on_a_model_without_past_key_values(tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig

    from tessera.core.assets import asset_path

    DistilBertConfig(n_layers=2, dim=64, n_heads=2, hidden_dim=128).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(asset_path("minilm")).save_pretrained(tmp_path)
    model = ["model=tiny", f"model.pretrained={tmp_path}"]
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", *model, "adapter=prefix"], plugins())
    message = str(caught.value)
    assert "adapter=prefix" in message and "model=tiny" in message and "DistilBertForSequenceClassification" in message
    with pytest.raises(IncompatibleError, match=r"^adapter=prefix cannot be combined with model=tiny: PEFT cannot"):
        validate(
            ["experiment=smoke", *model, "adapter=prefix", "adapter.prefix.kind=prompt"], plugins()
        )  # PEFT's dry run


@pytest.mark.parametrize(
    "overrides, first, second",
    [
        (["adapter=[lora,ia3]"], "adapter=lora", "adapter=ia3"),
        (["adapter=[adalora,linear_probe]"], "adapter=adalora", "adapter=linear_probe"),
        (["adapter=freeze", "adapter.freeze.layers=3"], "adapter=freeze (layers=3)", "model=tiny"),
    ],
)
def test_incompatible_stacks_are_refused_naming_both(overrides, first, second):
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", *overrides], plugins())
    assert str(caught.value).startswith(f"{first} cannot be combined with {second}: ")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adapter=freeze", "adapter.freeze.embeddings=false"], "freezes nothing"),
        (["adapter=llrd", "adapter.llrd.decay=1.5"], "adapter.llrd.decay=1.5 must be in (0, 1]"),
        (["adapter=prefix", "adapter.prefix.kind=suffix"], "adapter.prefix.kind=suffix is not one of prefix, prompt"),
        (["adapter=linear_probe", "adapter.linear_probe.head_modules=[head]"], "its top-level modules are bert"),
    ],
)
def test_bad_adapter_parameters_are_refused(overrides, message):
    with pytest.raises(ConfigError) as caught:
        validate(["experiment=smoke", *overrides], plugins())
    assert message in str(caught.value)


def test_the_command_line_prints_the_refusal_in_one_line(tmp_path):
    result = tessera("train", "experiment=smoke", "adapter=[lora,ia3]", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: adapter=lora cannot be combined with adapter=ia3: ")
    assert not (tmp_path / "run").exists()


# --- the unmerged export of a decoder LoRA adapter -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    """A factory of the same tiny random-weight Llama causal LM (SmolLM2's vocabulary), and a batch for it."""
    import torch
    from omegaconf import OmegaConf

    from tessera.core.models import load_model, load_tokenizer

    model_cfg = OmegaConf.create(
        {
            "pretrained": "asset:smollm2",
            "random_init": True,
            "config_overrides": {
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
            },
        }
    )
    tokenizer = load_tokenizer(model_cfg)
    batch = tokenizer(["The film was a delight.", "Dull."], padding=True, return_tensors="pt")

    def build():
        return load_model(model_cfg, "causal-lm", [], tokenizer, seed=0).eval()

    return build, dict(batch), torch


def trained(model, torch):
    """Stand in for training: random values in every trainable weight, drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def test_decoder_lora_exports_a_peft_directory_that_vllm_accepts(tiny_llama, tmp_path):
    from peft import PeftModel

    from tessera.plugins.adapters.lora import Lora

    build, batch, torch = tiny_llama
    adapter = Lora(Lora.Config(r=8))
    run = SimpleNamespace(composition=SimpleNamespace(task="causal-lm"), total_steps=10)
    model = trained(adapter.apply(build(), run), torch).eval()
    expected = model(**batch).logits

    assert adapter.save_unmerged(model, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config["modules_to_save"] and not config["use_dora"]
    assert config["bias"] == "none" and config["task_type"] == "CAUSAL_LM"
    reloaded = PeftModel.from_pretrained(build(), tmp_path / "lora").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected)
    assert "adapters/lora is served unmerged by vLLM: --enable-lora --lora-modules lora=" in adapter.export_note(model)

    merged = adapter.merge(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_decoder_dora_and_classification_heads_are_not_served_unmerged(tiny_llama):
    from tessera.plugins.adapters.lora import Dora

    build, _, _ = tiny_llama
    adapter = Dora(Dora.Config(r=4))
    model = adapter.apply(build(), SimpleNamespace(composition=SimpleNamespace(task="causal-lm"), total_steps=10))
    note = adapter.export_note(model)
    assert note.startswith("adapters/dora cannot be served unmerged by vLLM (vLLM does not serve DoRA)")
    assert note.endswith("export/ holds the merged model, the one to serve.")


@pytest.mark.slow
def test_vllm_validates_the_exported_decoder_adapter(tiny_llama, tmp_path):
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    from tessera.plugins.adapters.lora import Dora, Lora

    build, _, _ = tiny_llama
    run = SimpleNamespace(composition=SimpleNamespace(task="causal-lm"), total_steps=10)
    for technique in (Lora, Dora):
        adapter = technique(technique.Config(r=8))
        adapter.save_unmerged(adapter.apply(build(), run), tmp_path / technique.name)
    PEFTHelper.from_local_dir(str(tmp_path / "lora"), 8192).validate_legal(LoRAConfig(max_lora_rank=8))
    with pytest.raises(ValueError, match="DoRA"):
        PEFTHelper.from_local_dir(str(tmp_path / "dora"), 8192).validate_legal(LoRAConfig(max_lora_rank=8))
