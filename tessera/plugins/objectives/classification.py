"""``classification``: cross-entropy over a sequence-classification head; metrics, plots and predictions."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.techniques import Objective, ObjectiveConfig


@dataclass
class ClassificationConfig(ObjectiveConfig):
    """Cross-entropy parameters."""

    label_smoothing: float = 0.0


class Classification(Objective):
    """Cross-entropy of the sequence-classification head against the example labels."""

    name = "classification"
    task = "sequence-classification"
    needs_labels = True
    Config = ClassificationConfig
    metric = "accuracy"
    higher_is_better = True

    def items(self, examples, tokenizer, max_length, seed):
        encoded = tokenizer([e["text"] for e in examples], truncation=True, max_length=max_length)
        return [{"input_ids": ids, "labels": e["label"]} for ids, e in zip(encoded["input_ids"], examples)]

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        return F.cross_entropy(outputs.logits.float(), batch["labels"], label_smoothing=self.config.label_smoothing)

    def evaluate(self, run, model, tokenizer, examples, split):
        """Accuracy, macro-F1, precision, recall, ROC AUC and loss; for ``test`` also the confusion matrix and ROC
        curve (PNG) and ``predictions.jsonl`` in the run directory."""
        from tessera.core.evaluate import classification_report, predict_probabilities

        if not examples:
            return {}
        items = self.items(examples, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed)
        return classification_report(run, examples, predict_probabilities(run, model, tokenizer, items), split)
