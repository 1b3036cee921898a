"""Labelled text data: the packaged movie reviews, the user's CSV / JSON Lines files or a directory saved by
``datasets`` (``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``), split and checked.

Every problem with a data file is a :class:`~tessera.core.errors.DataError` that names the file, the row and the fix.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tessera.core.errors import DataError
from tessera.core.max_length import check_max_length

#: One example: ``{"text": str, "label": int, "label_text": str}`` (``label`` indexes :attr:`Splits.labels`);
#: unlabelled data has only ``text``.
Example = dict


@dataclass
class Splits:
    """The train / validation / test examples and the label names in class-index order."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str]


def _read_rows(path: Path, fmt: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: set data.path to an existing {fmt} file")
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error.msg}): fix or remove it") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number} is not a JSON object: write one object per line")
                rows.append(row)
        return rows
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable UTF-8 CSV file ({error}): save it as UTF-8 CSV") from None


#: The data formats: files read row by row, and a directory saved by ``datasets``.
FORMATS = ("csv", "jsonl", "hf_disk")
#: The splits of a saved ``DatasetDict`` that a run uses (``train`` is required).
SAVED_SPLITS = ("train", "validation", "test")


def _saved_rows(path: Path, label_column: str | None) -> dict[str, list[dict]]:
    """``{split: rows}`` of a directory written by ``datasets``' ``save_to_disk``: the splits of a ``DatasetDict``, or
    ``{"train": rows}`` of a single ``Dataset``; ``ClassLabel`` labels become their names."""
    import datasets

    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist: set data.path to a directory written by save_to_disk")
    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            f"{path} is not a directory written by datasets' save_to_disk: save a Dataset or a DatasetDict there"
        ) from None
    tables = dict(saved) if isinstance(saved, datasets.DatasetDict) else {"train": saved}
    if "train" not in tables:
        raise DataError(f"{path} holds the splits {', '.join(tables)} but no 'train': name the training split train")
    rows = {}
    for split in SAVED_SPLITS:
        if split in tables:
            feature = tables[split].features.get(label_column) if label_column else None
            rows[split] = tables[split].to_list()
            if isinstance(feature, datasets.ClassLabel):
                for row in rows[split]:
                    value = row[label_column]
                    row[label_column] = None if value is None or value < 0 else feature.names[value]
    return rows


def _examples(rows: list[dict], path, fmt: str, text_column: str, label_column: str | None):
    """``(text, raw label)`` pairs of the ``rows`` read from ``path`` (label ``None`` when ``label_column`` is),
    columns and texts checked."""
    if not rows:
        raise DataError(f"{path} holds no examples: add rows with a '{text_column}' column")
    columns = list(rows[0])
    wanted = [(text_column, "data.text_column")] + ([(label_column, "data.label_column")] if label_column else [])
    for column, key in wanted:
        if column not in columns:
            raise DataError(
                f"{path} has no column '{column}' (it has {', '.join(map(str, columns))}): set {key} to one of them"
            )
    pairs = []
    for number, row in enumerate(rows, 2 if fmt == "csv" else 1):
        text, label = row.get(text_column), row.get(label_column)
        if text is None or not str(text).strip():
            where = f"object {number}" if fmt == "jsonl" else f"row {number}"
            raise DataError(f"{path} {where} has an empty text: fill it in or remove the row")
        if label_column is None:
            pairs.append((str(text).strip(), None))
            continue
        if label is None or str(label).strip() == "":
            raise DataError(f"{path} row {number} has no label in '{label_column}': label it or remove the row")
        pairs.append((str(text).strip(), str(label).strip()))
    return pairs


def read_pairs(path: Path, fmt: str, text_column: str, label_column: str | None) -> list[tuple[str, str | None]]:
    """``(text, raw label)`` pairs of a ``csv`` or ``jsonl`` file (label ``None`` when ``label_column`` is), columns
    and texts checked."""
    return _examples(_read_rows(path, fmt), path, fmt, text_column, label_column)


def _encode(pairs: list[tuple[str, str | None]], labels: list[str], path) -> list[Example]:
    if not labels:
        return [{"text": text} for text, _ in pairs]
    index = {label: i for i, label in enumerate(labels)}
    outside = sorted({label for _, label in pairs if label not in index})
    if outside:
        raise DataError(
            f"{path} has labels {outside[:5]} outside the label set {labels}: fix the rows or set data.labels"
        )
    return [{"text": text, "label": index[label], "label_text": label} for text, label in pairs]


def resolve_path(value: str) -> Path:
    """A data path: ``asset:NAME/FILE`` is a file of a packaged offline asset, anything else a local path."""
    if value.startswith("asset:"):
        from tessera.core.assets import asset_path

        name, _, relative = value.removeprefix("asset:").partition("/")
        return asset_path(name) / relative
    return Path(value).expanduser()


def load_splits(data_cfg, labelled: bool = True) -> Splits:
    """Read, check and split the data the config names (fixed split from ``data.split_seed``).

    ``labelled=False`` (objectives that need no labels, such as MLM) reads only the text column.
    """
    check_max_length(data_cfg.max_length)
    if data_cfg.format not in FORMATS:
        raise DataError(f"unknown data.format '{data_cfg.format}': choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    if not data_cfg.path:
        wanted = (
            "a directory: add data.path=/path/to/saved_dataset"
            if data_cfg.format == "hf_disk"
            else (f"a file: add data.path=/path/to/your.{data_cfg.format}")
        )
        raise DataError(f"data={data_cfg.name} needs {wanted}")
    path, fmt, text_column = resolve_path(data_cfg.path), data_cfg.format, data_cfg.text_column
    label_column = data_cfg.label_column if labelled else None
    saved = _saved_rows(path, label_column) if fmt == "hf_disk" else {"train": _read_rows(path, fmt)}
    pairs = _examples(saved["train"], path, fmt, text_column, label_column)
    labels = (list(data_cfg.labels) or sorted({label for _, label in pairs})) if labelled else []
    if labelled and len(labels) < 2:
        raise DataError(f"{path} has a single label {labels}: a classifier needs at least two")
    examples = _encode(pairs, labels, path)
    random.Random(data_cfg.split_seed).shuffle(examples)
    extra = {}
    for split in ("validation", "test"):
        split_path = data_cfg.get(f"{split}_path")
        if split_path and fmt == "hf_disk":
            raise DataError(f"data.{split}_path is for csv and jsonl files: save the {split} split in the DatasetDict")
        if split in saved:
            where = f"{path} ({split} split)"
            extra[split] = _encode(_examples(saved[split], where, fmt, text_column, label_column), labels, where)
        elif split_path:
            split_file = resolve_path(split_path)
            extra[split] = _encode(read_pairs(split_file, fmt, text_column, label_column), labels, split_file)
    n = len(examples)
    n_test = 0 if "test" in extra else round(n * data_cfg.test_fraction)
    n_validation = 0 if "validation" in extra else round(n * data_cfg.validation_fraction)
    test = extra.get("test", examples[:n_test])
    validation = extra.get("validation", examples[n_test : n_test + n_validation])
    train = examples[n_test + n_validation :]
    if not train or not test:
        raise DataError(f"{path} has {n} examples, too few for train and test splits: add data or test_path")
    limit_train, limit_eval = data_cfg.limit_train, data_cfg.limit_eval
    return Splits(
        train=train[:limit_train],
        validation=validation[:limit_eval],
        test=test[:limit_eval],
        labels=labels,
    )


#: ``data.unlabelled=rest``: the training examples beyond ``data.limit_train``.
REST = "rest"


def _unlabelled_file(data_cfg) -> tuple[Path, str]:
    """The unlabelled file ``data.unlabelled`` names and its format (from its suffix, else ``data.format``)."""
    path = resolve_path(data_cfg.unlabelled)
    fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(path.suffix.lower(), data_cfg.format)
    if fmt not in ("csv", "jsonl"):
        raise DataError(f"data.unlabelled={data_cfg.unlabelled} must be a csv or jsonl file (or rest)")
    if not path.is_file():
        raise DataError(
            f"data.unlabelled={data_cfg.unlabelled}: {path} does not exist: set data.unlabelled to a csv or jsonl "
            f"file with a '{data_cfg.text_column}' column, or to rest (the training examples beyond data.limit_train)"
        )
    return path, fmt


def check_unlabelled(data_cfg) -> None:
    """Refuse a ``data.unlabelled`` that cannot be read, in one line, without reading it."""
    if not data_cfg.get("unlabelled"):
        raise DataError(
            "objective=consistency needs unlabelled text: set data.unlabelled=rest (the training examples beyond "
            "data.limit_train) or data.unlabelled=PATH (a csv or jsonl file)"
        )
    if data_cfg.unlabelled == REST:
        if data_cfg.limit_train is None:
            raise DataError(
                "data.unlabelled=rest is the training examples beyond data.limit_train, which is not set: "
                "set data.limit_train=N (the labelled examples) or data.unlabelled=PATH"
            )
    else:
        _unlabelled_file(data_cfg)
    if data_cfg.get("limit_unlabelled") is not None and data_cfg.limit_unlabelled < 1:
        raise DataError(f"data.limit_unlabelled={data_cfg.limit_unlabelled}: set 1 or more, or null for all")


def load_unlabelled(data_cfg) -> list[str]:
    """The unlabelled texts ``data.unlabelled`` names (:func:`check_unlabelled`), at most ``data.limit_unlabelled``:
    ``rest``, the training split's examples beyond ``data.limit_train`` (never validation or test), or the texts
    of a file, shuffled from ``data.split_seed``."""
    from omegaconf import OmegaConf

    check_unlabelled(data_cfg)
    if data_cfg.unlabelled == REST:
        whole = OmegaConf.merge(data_cfg, {"limit_train": None, "limit_eval": None})
        texts = [example["text"] for example in load_splits(whole).train[data_cfg.limit_train :]]
    else:
        path, fmt = _unlabelled_file(data_cfg)
        texts = [text for text, _ in read_pairs(path, fmt, data_cfg.text_column, None)]
        random.Random(data_cfg.split_seed).shuffle(texts)
    if not texts:
        raise DataError(
            f"data.unlabelled={data_cfg.unlabelled} holds no text (data.limit_train covers the whole training split?)"
        )
    return texts[: data_cfg.get("limit_unlabelled")]
