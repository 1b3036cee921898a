"""The export's drift reference (``drift_reference.json``): what the classifier's inputs and answers look like on
data it was not trained on, written when the run exports.

The inputs' features (:mod:`tessera.monitor.features`) and the final model's predicted labels and confidences are
measured on the validation split (held out, so its out-of-vocabulary shares are those of unseen in-domain text);
the vocabulary is the training split's words. Served traffic is compared with this sample.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tessera.monitor import MonitorError
from tessera.monitor.features import NUMERIC_FEATURES, input_features, vocabulary

log = logging.getLogger("tessera")
REFERENCE_FILE = "drift_reference.json"
#: Bump when the file's layout changes; older files are refused with the fix.
FORMAT = 1
HOW_TO_MAKE = (
    "retrain the run with this version of tessera (a classifier run with a validation split writes "
    f"export/{REFERENCE_FILE})"
)


@dataclass
class DriftReference:
    """The reference sample: each numeric feature's values, the predicted-label counts and the training vocabulary."""

    labels: list[str]
    samples: dict[str, list[float]]
    label_counts: dict[str, int]
    vocabulary: set[str]
    split: str

    @property
    def examples(self) -> int:
        """How many examples the reference was measured on."""
        return sum(self.label_counts.values())

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "split": self.split,
            "examples": self.examples,
            "labels": self.labels,
            "features": self.samples,
            "label_counts": self.label_counts,
            "vocabulary": sorted(self.vocabulary),
        }

    @classmethod
    def load(cls, export: Path) -> DriftReference:
        """The reference in the export directory ``export``; a ``MonitorError`` naming the fix when it has none
        or it is unreadable."""
        path = Path(export) / REFERENCE_FILE
        if not path.is_file():
            raise MonitorError(f"{export} has no drift reference ({REFERENCE_FILE}): {HOW_TO_MAKE}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise MonitorError(
                    f"{path} has format {data.get('format')}, this tessera reads {FORMAT}: {HOW_TO_MAKE}"
                )
            samples = {name: [v for v in data["features"][name] if v is not None] for name in NUMERIC_FEATURES}
            return cls(data["labels"], samples, data["label_counts"], set(data["vocabulary"]), data["split"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise MonitorError(f"{path} is not a readable drift reference ({error!r}): {HOW_TO_MAKE}") from None


def measure_reference(run, model, tokenizer, train: list[dict], held_out: list[dict]) -> DriftReference:
    """The reference of a classifier: features and predictions of ``held_out`` examples, the vocabulary of
    ``train``."""
    from tessera.core.evaluate import predict_probabilities

    known = vocabulary(example["text"] for example in train)
    texts = [example["text"] for example in held_out]
    features = input_features(texts, tokenizer, known)
    items = run.composition.item_builder.items(held_out, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed)
    probabilities = predict_probabilities(run, model, tokenizer, items)
    labels = list(run.state["labels"])
    predicted = Counter(labels[index] for index in probabilities.argmax(axis=1))
    samples = {name: [row[name] for row in features] for name in ("tokens", "oov_share")}
    samples["oov_share"] = [None if share is None else round(share, 6) for share in samples["oov_share"]]
    samples["confidence"] = [round(value, 6) for value in probabilities.max(axis=1).tolist()]
    return DriftReference(labels, samples, {label: predicted[label] for label in labels}, known, "validation")


def write_reference(directory: Path, run, model, tokenizer, train: list[dict], held_out: list[dict]) -> None:
    """Write ``drift_reference.json`` into the export being written (``directory``) for a sequence classifier with
    held-out examples; log why not otherwise."""
    from tessera.core.files import write_text

    if run.composition.task != "sequence-classification":
        return
    if not held_out or not train:
        log.info("export: no drift reference (the run has no validation split): tessera monitor will need one")
        return
    reference = measure_reference(run, model, tokenizer, train, held_out)
    write_text(directory / REFERENCE_FILE, json.dumps(reference.to_json()) + "\n")
    log.info("export: drift reference of %d validation examples in %s", reference.examples, REFERENCE_FILE)
