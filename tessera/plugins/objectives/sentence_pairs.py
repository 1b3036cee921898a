"""``nsp`` and ``sop``: next-sentence prediction (BERT) and sentence-order prediction (ALBERT) on sentence pairs
drawn from multi-sentence documents (``data=full_reviews`` is the packaged corpus)."""

from __future__ import annotations

import random
import re
from abc import abstractmethod
from dataclasses import dataclass

from tessera.core.techniques import Objective, ObjectiveConfig

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class SentencePairConfig(ObjectiveConfig):
    """How pairs are drawn."""

    #: Share of pairs whose label is 1 (a random next sentence for NSP, a swapped order for SOP).
    negative_fraction: float = 0.5
    #: At most this many pairs per document per pass.
    pairs_per_document: int = 8


def sentences(text: str) -> list[str]:
    """The sentences of a document (split after ``.``, ``!`` or ``?``, and at line breaks)."""
    return [part.strip() for line in text.splitlines() for part in _SENTENCE_END.split(line) if part.strip()]


class _SentencePairs(Objective):
    """Shared pair drawing and loss; subclasses say what a negative pair is."""

    task = "next-sentence"
    Config = SentencePairConfig
    metric = "accuracy"
    higher_is_better = True

    def validate(self, composition):
        from tessera.core.errors import IncompatibleError
        from tessera.core.models import is_decoder

        if is_decoder(composition.cfg.model):
            raise IncompatibleError(
                self.label,
                f"model={composition.cfg.model.name}",
                "sentence-pair objectives need an encoder with a [CLS] pair head",
            )

    @abstractmethod
    def negative(self, first: str, second: str, documents: list[list[str]], rng: random.Random) -> tuple[str, str]:
        """The pair to use instead of ``(first, second)`` when the label is 1."""

    def items(self, examples, tokenizer, max_length, seed):
        rng = random.Random(seed)
        documents = [found for found in (sentences(e["text"]) for e in examples) if len(found) >= 2]
        pairs = []
        for index, document in enumerate(documents):
            starts = list(range(len(document) - 1))
            for start in rng.sample(starts, min(len(starts), self.config.pairs_per_document)):
                first, second, label = document[start], document[start + 1], 0
                if rng.random() < self.config.negative_fraction:
                    first, second = self.negative(first, second, documents[:index] + documents[index + 1 :], rng)
                    label = 1
                pairs.append((first, second, label))
        encoded = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "token_type_ids": types, "next_sentence_label": label}
            for ids, types, (_, _, label) in zip(encoded["input_ids"], encoded["token_type_ids"], pairs)
        ]

    @staticmethod
    def _logits(outputs):
        logits = getattr(outputs, "seq_relationship_logits", None)  # a model with both pretraining heads
        return outputs.logits if logits is None else logits

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        return F.cross_entropy(self._logits(outputs).float(), batch["next_sentence_label"])

    def evaluate(self, run, model, tokenizer, examples, split):
        """Mean loss and pair accuracy."""
        from tessera.core.evaluate import evaluation_passes

        losses, correct, total = [], 0, 0
        for batch, outputs in evaluation_passes(run, self, model, tokenizer, examples):
            losses.append(self.loss(outputs, batch).item())
            correct += (self._logits(outputs).argmax(-1) == batch["next_sentence_label"]).sum().item()
            total += len(batch["next_sentence_label"])
        return {"loss": sum(losses) / max(len(losses), 1), "accuracy": correct / max(total, 1)}


class NextSentence(_SentencePairs):
    """Is the second sentence the one that follows the first (0) or a random sentence of another document (1)?"""

    name = "nsp"

    def negative(self, first, second, documents, rng):
        return first, rng.choice(rng.choice(documents))


class SentenceOrder(_SentencePairs):
    """Are two consecutive sentences in their order (0) or swapped (1)?"""

    name = "sop"

    def negative(self, first, second, documents, rng):
        return second, first
