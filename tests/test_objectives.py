"""Objectives: their training items, masking and losses on tiny models, incompatible pairs, and short real runs."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import load_json, plugins, tessera
from tessera.core.batching import IGNORE_INDEX, collate
from tessera.core.cli import validate
from tessera.core.errors import IncompatibleError
from tessera.core.models import load_tokenizer
from tessera.plugins.objectives.causal_lm import CausalLM, CausalLMConfig, Instruction, InstructionConfig
from tessera.plugins.objectives.masked_lm import MaskedLM, MaskedLMConfig
from tessera.plugins.objectives.sentence_pairs import NextSentence, SentenceOrder, SentencePairConfig, sentences

DOCUMENTS = [
    {"text": "the film opens slowly . then it finds its pace .\nthe actors are superb . the ending hurts ."},
    {"text": "a dull plot . nothing happens for an hour . the score is loud . i left early ."},
    {"text": "great fun ! the kids loved it . so did the parents . we will watch it again ."},
]


@pytest.fixture(scope="module")
def bert_tokenizer():
    return load_tokenizer(OmegaConf.create({"pretrained": "asset:minilm"}))


@pytest.fixture(scope="module")
def llama_tokenizer():
    return load_tokenizer(OmegaConf.create({"pretrained": "asset:smollm2"}))


def test_mlm_masks_fifteen_percent_of_ordinary_tokens_and_never_special_ones(bert_tokenizer):
    mlm = MaskedLM(MaskedLMConfig())
    items = mlm.items(DOCUMENTS * 40, bert_tokenizer, 32, seed=0)
    batch = collate(items, list(range(len(items))), bert_tokenizer.pad_token_id)
    masked = mlm.transform(batch, bert_tokenizer, torch.Generator().manual_seed(0))
    again = mlm.transform(batch, bert_tokenizer, torch.Generator().manual_seed(0))
    assert torch.equal(masked["input_ids"], again["input_ids"])
    chosen = masked["mlm_labels"] != IGNORE_INDEX
    ordinary = (batch["attention_mask"] == 1) & ~torch.isin(
        batch["input_ids"], torch.tensor([bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id])
    )
    assert not (chosen & ~ordinary).any()
    assert 0.12 < chosen.sum().item() / ordinary.sum().item() < 0.18
    assert torch.equal(masked["mlm_labels"][chosen], batch["input_ids"][chosen])
    share_masked = (masked["input_ids"][chosen] == bert_tokenizer.mask_token_id).float().mean().item()
    assert 0.7 < share_masked < 0.9


def test_whole_word_masking_masks_every_piece_of_a_word(bert_tokenizer):
    mlm = MaskedLM(MaskedLMConfig(probability=0.3, whole_word=True))
    items = mlm.items([{"text": "unbelievably overwhelming cinematography " * 10}], bert_tokenizer, 128, seed=0)
    batch = collate(items, [0], bert_tokenizer.pad_token_id)
    chosen = (mlm.transform(batch, bert_tokenizer, torch.Generator().manual_seed(1))["mlm_labels"] != IGNORE_INDEX)[0]
    tokens = bert_tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    for position, token in enumerate(tokens):
        if token.startswith("##"):
            assert chosen[position] == chosen[position - 1], tokens[position - 1 : position + 1]
    assert chosen.any() and not chosen.all()


def test_sentence_pairs_are_balanced_and_sop_negatives_swap_the_order(bert_tokenizer):
    assert sentences(DOCUMENTS[0]["text"])[:2] == ["the film opens slowly .", "then it finds its pace ."]
    nsp_items = NextSentence(SentencePairConfig()).items(DOCUMENTS * 30, bert_tokenizer, 64, seed=0)
    labels = [item["next_sentence_label"] for item in nsp_items]
    assert 0.35 < np.mean(labels) < 0.65 and all("token_type_ids" in item for item in nsp_items)
    sop = SentenceOrder(SentencePairConfig(negative_fraction=1.0))
    swapped = bert_tokenizer.decode(sop.items(DOCUMENTS[:1], bert_tokenizer, 64, seed=3)[0]["input_ids"])
    first, second = (part.replace("[CLS]", "").replace(" ", "") for part in swapped.split("[SEP]")[:2])
    doc = [sentence.replace(" ", "") for sentence in sentences(DOCUMENTS[0]["text"])]
    assert doc.index(first) == doc.index(second) + 1


def test_clm_packs_texts_into_full_windows(llama_tokenizer):
    items = CausalLM(CausalLMConfig()).items(DOCUMENTS * 5, llama_tokenizer, 16, seed=0)
    assert all(len(item["input_ids"]) == 16 for item in items[:-1])
    assert all(item["lm_labels"] == item["input_ids"] for item in items)
    stream = [t for item in items for t in item["input_ids"]]
    assert stream.count(llama_tokenizer.eos_token_id) == 15


def test_instruction_loss_covers_only_the_answer(llama_tokenizer):
    instruction = Instruction(InstructionConfig())
    example = {"text": "a joyous film", "label": 1, "label_text": "positive"}
    item = instruction.items([example], llama_tokenizer, 128, seed=0)[0]
    answer = [t for t in item["lm_labels"] if t != IGNORE_INDEX]
    assert llama_tokenizer.decode(answer, skip_special_tokens=True) == "positive"
    assert item["input_ids"][-len(answer) :] == answer
    prompt = llama_tokenizer.decode(item["input_ids"][: -len(answer)])
    assert "a joyous film" in prompt and "assistant" in prompt


@pytest.mark.parametrize(
    "overrides, first, second",
    [
        (["objective=nsp", "model=tiny_llama", "adapter=none"], "objective=nsp", "model=tiny_llama"),
        (["objective=instruction", "adapter=none"], "objective=instruction", "model=tiny"),
        (["objective=[classification,mlm]", "adapter=none"], "objective=classification", "objective=mlm"),
        (["objective=[nsp,sop]", "adapter=none"], "objective=nsp", "objective=sop"),
    ],
)
def test_incompatible_objectives_are_refused_naming_both(overrides, first, second):
    plugins()
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", "data=full_reviews", *overrides], plugins())
    assert first in str(caught.value) and second in str(caught.value)


@pytest.mark.parametrize(
    "overrides, metric",
    [
        (["objective=[mlm,nsp]", "data=full_reviews", "data.limit_train=48"], "mlm_masked_accuracy"),
        (["objective=clm", "model=tiny_llama", "trainer.epochs=4"], "perplexity"),
        (["objective=instruction", "model=tiny_llama", "data.limit_train=96"], "exact_match"),
    ],
    ids=["mlm+nsp", "clm", "instruction"],
)
def test_objectives_train_a_tiny_model_and_the_loss_falls(tmp_path, overrides, metric):
    result = tessera(
        "train",
        "experiment=smoke",
        "adapter=none",
        "data.limit_eval=16",
        "trainer.learning_rate=3e-3",
        "trainer.warmup_ratio=0",
        *overrides,
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = load_json(tmp_path / "run" / "metrics.json")
    losses = [step["loss"] for step in metrics["train"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert metric in metrics["test"]
    assert (tmp_path / "run" / "export" / "config.json").is_file()


def test_dapt_runs_its_stages_and_compares_them(tmp_path):
    result = tessera(
        "train",
        "experiment=dapt",
        "model=tiny",
        "adapter=none",
        "data.limit_train=32",
        "data.limit_eval=16",
        "trainer.epochs=1",
        "trainer.max_steps=6",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    stages = load_json(run / "metrics.json")["stages"]
    assert list(stages) == ["dapt", "finetune", "baseline"]
    assert "masked_accuracy" in stages["dapt"] and "accuracy" in stages["finetune"]
    finetune_cfg = OmegaConf.load(run / "stages" / "finetune" / "config.yaml")
    assert finetune_cfg.model.pretrained == str(run / "stages" / "dapt" / "export")
    assert "| accuracy |" in (run / "report.md").read_text()
    assert load_json(run / "run.json")["status"] == "complete"
