"""The stacking rule (tessera.core.adapting): each adapter makes trainable only what it owns, the run trains the
union, the adapters that own nothing act on that union. On a tiny random BERT with the example plugin's BitFit."""

import importlib.util

import pytest

from conftest import REPO, plugins
from tessera.core.cli import compose_config


def _example_plugin():
    """The example plugin's module, imported from its file: its directory stays off ``sys.path``, so the package
    metadata a build leaves there (an ``.egg-info`` with the entry point) cannot install it in this process."""
    path = REPO / "examples" / "tessera-plugin-example" / "tessera_plugin_example" / "__init__.py"
    spec = importlib.util.spec_from_file_location("tessera_plugin_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BitFit = _example_plugin().BitFit

SENTENCES = ["A film of rare beauty.", "Dull, long and pointless.", "I loved every minute.", "A waste of time."]


def stacked(order, *overrides):
    """A tiny BERT with adapters applied in ``order`` and its tokenizer: ``bitfit`` is BitFit, another name the
    config's next adapter, an instance itself."""
    from tessera.core.adapting import apply_adapters
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.run import Run, compose
    from tessera.core.techniques import Adapter

    plugins()
    cfg = compose_config(["experiment=smoke", *overrides], plugins())
    composition = compose(cfg, plugins())
    run = Run(composition, REPO)
    run.total_steps = 10
    configured = iter(composition.selected("adapter"))
    adapters = [
        entry if isinstance(entry, Adapter) else BitFit(BitFit.Config()) if entry == "bitfit" else next(configured)
        for entry in order
    ]
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, composition.task, ["negative", "positive"], tokenizer, 0)
    return apply_adapters(model, adapters, run), tokenizer


def moved_by_one_step(model, tokenizer) -> set[str]:
    """The parameters whose values one AdamW step on four labelled sentences changes."""
    import torch

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([1, 0, 1, 0])).loss.backward()
    optimizer.step()
    return {name for name, p in model.named_parameters() if not p.detach().equal(before[name])}


@pytest.mark.parametrize("order", [["bitfit", "lora"], ["lora", "bitfit"]])
def test_bitfit_and_lora_both_train_in_either_order(order):
    model, tokenizer = stacked(order, "adapter=lora")
    names = [name for name, _ in model.named_parameters()]
    lora = {name for name in names if ".lora_" in name}
    biases = {name for name in names if name.endswith(".bias") and "classifier" not in name}
    head = {name for name in names if "classifier" in name}
    assert lora and biases and head
    assert {name for name, p in model.named_parameters() if p.requires_grad} == lora | biases | head
    moved = moved_by_one_step(model, tokenizer)
    assert lora <= moved and biases <= moved


@pytest.mark.parametrize("adapters", ["[freeze,lora]", "[lora,freeze]"])
def test_a_freezing_adapter_acts_on_the_union_wherever_it_is_listed(adapters):
    model, _ = stacked(["lora", "freeze"], f"adapter={adapters}", "adapter.freeze.layers=1")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name, _ in model.named_parameters() if ".lora_" in name}
    assert trainable & lora == {name for name in lora if ".layer.0." not in name} and trainable - lora
    assert all("classifier" in name for name in trainable - lora)


def test_llrd_alone_owns_nothing_and_the_whole_model_trains():
    model, _ = stacked(["llrd"], "adapter=llrd")
    assert all(p.requires_grad for p in model.parameters())


def test_an_owning_adapter_that_marks_nothing_trainable_is_refused():
    from tessera.core.errors import PluginError

    class FreezesEmbeddings(BitFit):
        """Written as if it acted on a trainable model, without owns_parameters = False."""

        def apply(self, model, run):
            for name, parameter in model.named_parameters():
                if "embeddings" in name:
                    parameter.requires_grad = False
            return model

    with pytest.raises(PluginError, match=r"^adapter=bitfit made no parameter trainable: an adapter sets"):
        stacked([FreezesEmbeddings(BitFit.Config())], "adapter=none")
