"""``objective=consistency`` (UDA): the masked, sharpened KL term written out by hand, the pairs a batch gets,
the unlabelled data sources and their one-line errors, and a composed ``tessera train`` that caches its
augmentations."""

import math

import pytest
from omegaconf import OmegaConf

from conftest import load_json, tessera
from tessera.core.errors import DataError
from tessera.plugins.objectives.consistency import PAIRS_KEY, Consistency, ConsistencyConfig


class Outputs:
    def __init__(self, logits):
        self.logits = logits


def batch_with_pairs(logits_rows: int, pairs: int):
    import torch

    return {
        "labels": torch.tensor([0] * (logits_rows - 2 * pairs) + [-100] * 2 * pairs),
        PAIRS_KEY: torch.tensor(pairs),
    }


def by_hand(original, augmented, threshold, temperature):
    """The UDA term, one pair at a time in plain Python."""
    total, kept = 0.0, 0
    for o, a in zip(original, augmented):
        p = [math.exp(x) / sum(math.exp(y) for y in o) for x in o]
        if max(p) < threshold:
            continue
        sharp = [math.exp(x / temperature) / sum(math.exp(y / temperature) for y in o) for x in o]
        q = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        total += sum(s * (math.log(s) - math.log(r)) for s, r in zip(sharp, q))
        kept += 1
    return total / max(kept, 1)


@pytest.mark.parametrize("threshold, temperature", [(0.0, 1.0), (0.0, 0.4), (0.7, 0.4), (0.99, 0.4)])
def test_the_loss_is_the_masked_sharpened_kl_of_the_pairs(threshold, temperature):
    import torch

    labelled = [[0.3, -0.2], [1.0, 0.5]]
    original = [[2.0, -1.0], [0.1, 0.2], [-1.5, 1.5]]
    augmented = [[0.5, 0.0], [1.0, -1.0], [0.0, 0.3]]
    logits = torch.tensor(labelled + original + augmented, requires_grad=True)
    objective = Consistency(ConsistencyConfig(threshold=threshold, temperature=temperature))
    loss = objective.loss(Outputs(logits), batch_with_pairs(len(logits), 3))
    value = float(loss.detach())
    assert value == pytest.approx(by_hand(original, augmented, threshold, temperature), rel=1e-5, abs=1e-7)
    if value > 0:
        loss.backward()
        assert logits.grad[:5].abs().sum() == 0  # nothing flows into the labelled rows or the targets
        assert logits.grad[5:].abs().sum() > 0


def test_masking_and_sharpening_behave():
    import torch

    original = torch.tensor([[3.0, 0.0], [0.1, 0.0]])
    augmented = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    mask_all = Consistency(ConsistencyConfig(threshold=0.99)).divergence(original, augmented)
    assert float(mask_all[0]) == 0 and mask_all[1].tolist() == [False, False]
    confident_only = Consistency(ConsistencyConfig(threshold=0.9)).divergence(original, augmented)
    assert confident_only[1].tolist() == [True, False]
    soft = Consistency(ConsistencyConfig(threshold=0.0, temperature=1.0)).divergence(original, augmented)[0]
    sharp = Consistency(ConsistencyConfig(threshold=0.0, temperature=0.4)).divergence(original, augmented)[0]
    assert float(sharp) > float(soft) > 0  # sharper targets are farther from a uniform prediction


def test_a_batch_without_pairs_adds_nothing():
    import torch

    objective = Consistency(ConsistencyConfig())
    assert float(objective.loss(Outputs(torch.randn(4, 2)), {"labels": torch.tensor([0, 1, 0, 1])})) == 0


def test_transform_appends_the_pairs_and_the_task_loss_ignores_them():
    import torch
    import torch.nn.functional as F

    objective = Consistency(ConsistencyConfig(ratio=1.5))
    objective.pairs = [([101, 7, 102], [101, 8, 9, 102]), ([101, 5, 102], [101, 6, 102])]
    objective.pad_id = 0
    batch = {
        "input_ids": torch.tensor([[101, 3, 4, 102], [101, 3, 102, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([1, 0]),
    }
    grown = objective.transform(batch, None, torch.Generator().manual_seed(0))
    assert int(grown[PAIRS_KEY]) == 3 and grown["input_ids"].shape == (2 + 6, 4)
    assert grown["labels"].tolist() == [1, 0] + [-100] * 6
    for row in range(2, 5):
        original, augmented = grown["input_ids"][row], grown["input_ids"][row + 3]
        pair = next(p for p in objective.pairs if p[0] == original[grown["attention_mask"][row].bool()].tolist())
        assert augmented[grown["attention_mask"][row + 3].bool()].tolist() == pair[1]
    logits = torch.randn(8, 2)
    assert F.cross_entropy(logits, grown["labels"]) == pytest.approx(
        float(F.cross_entropy(logits[:2], batch["labels"]))
    )


def data_cfg(**overrides):
    from tessera.core.config import DataConfig

    base = OmegaConf.structured(DataConfig)
    preset = {"name": "movie_reviews", "format": "csv", "path": "asset:movie_reviews/sentence_polarity.csv"}
    return OmegaConf.merge(base, {**preset, "labels": ["negative", "positive"], **overrides})


def test_the_rest_of_the_training_split_is_the_unlabelled_set():
    from tessera.core.data import load_splits, load_unlabelled

    cfg = data_cfg(limit_train=100, unlabelled="rest", limit_unlabelled=300)
    rest = load_unlabelled(cfg)
    whole = load_splits(data_cfg())
    assert rest == [e["text"] for e in whole.train[100:400]]
    held_out = {e["text"] for e in whole.test + whole.validation}
    assert not held_out & set(rest) and not {e["text"] for e in whole.train[:100]} & set(rest)


def test_an_unlabelled_file_is_read_by_its_text_column(tmp_path):
    from tessera.core.data import load_unlabelled

    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a fine film"}\n{"text": "a dull one"}\n')
    assert sorted(load_unlabelled(data_cfg(unlabelled=str(path)))) == ["a dull one", "a fine film"]
    full = load_unlabelled(data_cfg(unlabelled="asset:movie_reviews/full_reviews.csv", limit_unlabelled=5))
    assert len(full) == 5 and all(len(text.split()) > 100 for text in full)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({}, "objective=consistency needs unlabelled text: set data.unlabelled=rest"),
        ({"unlabelled": "rest"}, "data.unlabelled=rest is the training examples beyond data.limit_train, which is"),
        ({"unlabelled": "/nowhere/x.csv"}, "data.unlabelled=/nowhere/x.csv: /nowhere/x.csv does not exist"),
        ({"unlabelled": "rest", "limit_train": 10, "limit_unlabelled": 0}, "data.limit_unlabelled=0"),
    ],
)
def test_bad_unlabelled_data_is_refused_in_one_line(overrides, message):
    from tessera.core.data import check_unlabelled

    with pytest.raises(DataError, match=message) as error:
        check_unlabelled(data_cfg(**overrides))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.unlabelled=/nowhere/x.csv"], "error: data.unlabelled=/nowhere/x.csv: /nowhere/x.csv does not exist"),
        (["objective=[classification]", "data.unlabelled=rest"], "is read only by objective=consistency"),
        (["objective.consistency.augment=nope"], "objective.consistency.augment=nope: choose an augmenter"),
        (["++objective.consistency.augment_options={rate: 0.1}"], "augment_options.rate is not a parameter"),
        (["objective=[consistency]"], "select objective=[classification,consistency]"),
    ],
)
def test_bad_compositions_fail_before_any_work_in_one_line(tmp_path, overrides, message):
    base = ["experiment=smoke", "objective=[classification,consistency]", "data.limit_train=50"]
    if not any(o.startswith("data.unlabelled") for o in overrides):
        base.append("data.unlabelled=rest")
    result = tessera("train", *base, *overrides, f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_consistency_training_run_caches_its_augmentations(tmp_path, private_cache):
    args = [
        "train",
        "experiment=smoke",
        "objective=[classification,consistency]",
        "objective.consistency.augment=eda",
        "objective.consistency.threshold=0.0",
        "data.limit_train=64",
        "data.limit_eval=32",
        "data.unlabelled=rest",
        "data.limit_unlabelled=40",
    ]
    first = tessera(*args, f"hydra.run.dir={tmp_path}/first")
    assert first.returncode == 0, first.stderr[-3000:]
    report = load_json(tmp_path / "first" / "consistency.json")
    assert report["unlabelled_texts"] == 40 and report["pairs"] > 40 and report["augmenter"]["cache"] == "miss"
    assert report["masked_share"] == 1.0
    metrics = load_json(tmp_path / "first" / "metrics.json")["test"]
    assert "classification_accuracy" in metrics and metrics["consistency_loss"] >= 0
    second = tessera(*args, f"hydra.run.dir={tmp_path}/second")
    assert second.returncode == 0, second.stderr[-3000:]
    assert load_json(tmp_path / "second" / "consistency.json")["augmenter"]["cache"] == "hit"
