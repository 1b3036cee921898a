"""``adversary=a2t`` on a tiny random-weight BERT with the real MiniLM tokenizer and WordNet: it substitutes
words, keeps to its budget, share and start epoch, reaches through a LoRA wrapper, and runs in a composed
``tessera train``."""

import functools

import pytest
from omegaconf import OmegaConf
from test_adversaries import tiny_model as adversaries_tiny_model

from conftest import load_json, tessera
from tessera.core.errors import ConfigError
from tessera.plugins.adversaries.a2t import A2T, A2TConfig
from tessera.robustness.lexicon import guess_pos, synonyms
from tessera.robustness.words import Words

SENTENCES = [
    "the acting is good and the story is wonderful",
    "a dull , tedious film that is not funny",
    "the music is beautiful but the plot is weak",
    "an amazing cast makes this movie a delight",
]


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    from tessera.core.assets import asset_path

    return AutoTokenizer.from_pretrained(asset_path("minilm"))


def tiny_model(seed=0):
    """A 2-layer BERT of hidden size 32 over the MiniLM vocabulary, random weights, no dropout."""
    return adversaries_tiny_model(seed, tokenizer().vocab_size)


def make_batch(texts=SENTENCES, labels=(1, 0, 0, 1)):
    import torch

    from tessera.core.batching import collate

    items = [{"input_ids": ids, "labels": label} for ids, label in zip(tokenizer()(list(texts))["input_ids"], labels)]
    return collate(items, list(range(len(items))), tokenizer().pad_token_id, torch.device("cpu"))


def adversary(**options) -> A2T:
    found = A2T(A2TConfig(**options))
    found.cfg = OmegaConf.create({"trainer": {"seed": 0}, "data": {"max_length": 64}})
    found.tokenizer = tokenizer()
    return found


def decode(batch) -> list[str]:
    return [
        tokenizer().decode(ids[mask.bool()].tolist(), skip_special_tokens=True)
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]


def attack_once(a2t, model=None, batch=None, end=True):
    """One backward through ``a2t`` (then the run's end, unless ``end`` is false); returns the batches the step's
    loss was computed on after the clean one."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    from tessera.core.batching import model_inputs
    from tessera.core.trainer import TrainStep

    model = model or tiny_model()
    batch = batch or make_batch()
    seen = []

    def compute_loss(b):
        seen.append(b)
        return F.cross_entropy(model(**model_inputs(b)).logits, b["labels"])

    step = TrainStep(model, batch, Accelerator(cpu=True), compute_loss)
    a2t.backward(step, compute_loss(batch))
    if end:
        a2t.tessera_run_end(run=None, status="complete", metrics={})
    return seen[1:]


def changes(before: str, after: str) -> list[tuple[str, str]]:
    return [(b, a) for b, a in zip(Words(before).list(), Words(after).list()) if b != a]


def paired(texts: list[str]) -> list[tuple[str, str]]:
    """Each adversarial text with the sentence it came from (same words but the fewest)."""
    pairs = []
    for text in texts:
        same_length = [o for o in SENTENCES if len(Words(o)) == len(Words(text))]
        pairs.append((min(same_length, key=lambda o: len(changes(o, text))), text))
    return pairs


@pytest.mark.parametrize("search", ["gradient", "greedy"])
def test_a2t_substitutes_wordnet_synonyms_within_the_budget(search):
    a2t = adversary(share=1.0, max_perturbed=0.25, search=search)
    adversarial = attack_once(a2t)
    assert a2t.counts["attacked"] == 4 and a2t.counts["perturbed"] >= 1
    texts = decode(adversarial[-1])
    assert len(texts) == a2t.counts["perturbed"]
    for original, text in paired(texts):
        found = changes(original, text)
        assert 1 <= len(found) <= max(1, int(0.25 * len(Words(original))))
        listed = Words(original).list()
        for before, after in found:
            assert after in synonyms(before, guess_pos(listed, listed.index(before)), multiword=False)


def test_a2t_attacks_its_share_of_the_batch_and_never_protected_words():
    a2t = adversary(share=0.5, max_perturbed=1.0)
    attack_once(a2t)
    assert a2t.counts["attacked"] == 2
    protected = ["good", "wonderful", "beautiful", "amazing", "dull", "tedious", "funny", "weak", "not"]
    guarded = adversary(share=1.0, max_perturbed=1.0, protected=protected)
    adversarial = attack_once(guarded)
    assert guarded.counts["perturbed"] >= 1
    for original, text in paired(decode(adversarial[-1])):
        assert changes(original, text) and not {before for before, _ in changes(original, text)} & set(protected)


class AllowedWords:
    """Word similarities from a set of allowed substitutes (1.0) and 0.0 for the rest: the constraint without a
    model."""

    def __init__(self, allowed):
        self.allowed = allowed

    def remember(self, words):
        list(words)

    def word_similarity(self, word, substitutes):
        return [1.0 if s in self.allowed else 0.0 for s in substitutes]


def test_the_word_similarity_constraint_limits_the_substitutes():
    a2t = adversary(share=1.0, max_perturbed=1.0, min_word_similarity=0.5)
    a2t.encoder = AllowedWords({"tale", "fantastic", "terrific"})
    adversarial = attack_once(a2t)
    for original, text in paired(decode(adversarial[-1])):
        assert {after for _, after in changes(original, text)} <= {"tale", "fantastic", "terrific"}
    assert a2t.counts["perturbed"] >= 1


def test_a2t_waits_for_its_start_epoch():
    a2t = adversary(share=1.0, start_epoch=1.0)
    assert attack_once(a2t) == [] and a2t.counts["attacked"] == 0
    a2t.tessera_step_end(run=None, step=3, metrics={"epoch": 1.0})
    assert attack_once(a2t) and a2t.counts["attacked"] == 4


def test_a2t_uses_the_gradient_of_the_trainers_forward_when_the_text_re_encodes_alike():
    model, batch = tiny_model(), make_batch()
    a2t = adversary(share=1.0)
    attack_once(a2t, model, batch, end=False)  # the first step has no recorded gradient: one more pass
    first = a2t.counts["gradient_passes"]
    attack_once(a2t, model, batch)
    assert first == 1 and a2t.counts["gradient_passes"] == 1


def test_greedy_search_raises_the_loss_of_every_example_it_changes():
    import torch
    import torch.nn.functional as F

    from tessera.core.batching import model_inputs

    model = tiny_model(3)
    a2t = adversary(share=1.0, max_perturbed=0.5, search="greedy")
    adversarial = attack_once(a2t, model)[-1]
    assert a2t.counts["queries"] > 0
    with torch.no_grad():
        model.eval()
        clean = make_batch()
        clean_losses = F.cross_entropy(model(**model_inputs(clean)).logits, clean["labels"], reduction="none")
        losses = F.cross_entropy(model(**model_inputs(adversarial)).logits, adversarial["labels"], reduction="none")
    by_text = {" ".join(Words(t).list()): loss for t, loss in zip(decode(clean), clean_losses.tolist())}
    for text, loss in zip(decode(adversarial), losses.tolist()):
        original = next(o for o in by_text if len(o.split()) == len(Words(text).list()) and len(changes(o, text)) <= 4)
        assert loss > by_text[original]


def test_embedding_neighbours_are_close_whole_words_and_never_antonyms():
    import torch

    model = tiny_model()
    ids = {word: tokenizer().convert_tokens_to_ids(word) for word in ("good", "fine", "bad", "##s")}
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[:] = torch.nn.functional.normalize(torch.randn_like(weight), dim=-1) * 0.01
        direction = torch.nn.functional.normalize(torch.randn(weight.shape[1]), dim=0)
        for word in ("good", "fine", "bad", "##s"):
            weight[ids[word]] = direction + 0.01 * torch.randn(weight.shape[1])
    a2t = adversary(candidates="embedding", share=1.0, min_embedding_similarity=0.9)
    attack_once(a2t, model, make_batch(["the acting is good"], [1]))
    neighbours = a2t.neighbour_cache["good"]
    assert neighbours == ["fine"]  # "bad" is an antonym, "##s" no whole word, the rest far away


def test_a2t_reaches_through_a_lora_wrapper():
    import peft

    model = peft.get_peft_model(
        tiny_model(), peft.LoraConfig(r=4, target_modules=["query", "value"], task_type=peft.TaskType.SEQ_CLS)
    )
    a2t = adversary(share=1.0)
    assert attack_once(a2t, model) and a2t.counts["perturbed"] >= 1
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n or "classifier" in n for n in trained)
    assert not model.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize(
    "options, message",
    [
        ({"candidates": "glove"}, "adversary.a2t.candidates=glove: choose wordnet or embedding"),
        ({"search": "beam"}, "adversary.a2t.search=beam"),
        ({"share": 0.0}, "adversary.a2t.share=0.0"),
        ({"max_perturbed": 1.5}, "adversary.a2t.max_perturbed=1.5"),
        ({"min_word_similarity": -0.1}, "adversary.a2t.min_word_similarity=-0.1"),
    ],
)
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        A2T(A2TConfig(**options)).validate(None)


def test_a2t_needs_a_classifier(tmp_path):
    result = tessera("train", "experiment=smoke", "objective=mlm", "adversary=a2t", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode != 0
    assert "adversary=a2t" in result.stderr and "sequence classifier" in result.stderr


def test_a2t_refuses_a_start_epoch_in_a_federated_stage(tmp_path):
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=fedavg",
        "adversary=a2t",
        "adversary.a2t.start_epoch=1",
        f"hydra.run.dir={tmp_path}/r",
    )
    assert result.returncode != 0 and "set adversary.a2t.start_epoch=0" in result.stderr


def test_a2t_in_a_composed_training_run(tmp_path):
    result = tessera(
        "train",
        "experiment=smoke",
        "adversary=a2t",
        "adapter=lora",
        "adversary.a2t.share=0.25",
        "data.limit_train=64",
        "data.limit_eval=32",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_json(tmp_path / "run" / "run.json")["composition"]["adversary"] == ["a2t"]
    report = load_json(tmp_path / "run" / "adversary" / "a2t.json")
    assert report["attacked"] == 4 * 4 and report["perturbed"] > 0 and report["mean_words_substituted"] >= 1


@pytest.mark.slow
def test_a2t_on_the_real_model_then_tessera_eval(tmp_path):
    run_dir = tmp_path / "a2t"
    trained = tessera(
        "train",
        "model=minilm",
        "adapter=lora",
        "adversary=a2t",
        "data.limit_train=160",
        "data.limit_eval=40",
        "data.max_length=48",
        "trainer.batch_size=16",
        "trainer.epochs=1",
        "trainer.checkpoint_every=0",
        f"hydra.run.dir={run_dir}",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = load_json(run_dir / "adversary" / "a2t.json")
    assert report["attacked"] == 80 and report["perturbed"] > 40
    evaluated = tessera("eval", str(run_dir), "attack=synonym", "examples=10", "query_budget=30")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    attack = load_json(run_dir / "attack" / "synonym" / "report.json")
    assert attack["examples"] == 10 and attack["mean_queries"] <= 30 + 64
    assert {"attack_success_rate", "mean_queries_attacked", "mean_queries_per_success", "budget_exhausted"} <= set(
        attack
    )
