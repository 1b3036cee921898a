"""Built-in objectives: ``classification`` (cross-entropy over a sequence-classification head)."""

from dataclasses import dataclass

from tessera import hookimpl
from tessera.core.techniques import Objective, ObjectiveConfig


@dataclass
class ClassificationConfig(ObjectiveConfig):
    """Cross-entropy parameters."""

    label_smoothing: float = 0.0


class Classification(Objective):
    """Cross-entropy of the sequence-classification head against the example labels."""

    name = "classification"
    task = "sequence-classification"
    Config = ClassificationConfig

    def loss(self, model, batch):
        import torch.nn.functional as F

        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.config.label_smoothing)


@hookimpl
def tessera_objectives():
    return [Classification]
