"""``mlm``: BERT's masked language modelling (15 % of tokens; 80 % [MASK], 10 % random, 10 % kept), with an
optional whole-word masking. It rides along with another objective (``objective=[mlm,nsp]``) by masking the
batches that objective builds, or trains alone on text chunks."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.batching import IGNORE_INDEX
from tessera.core.techniques import Objective, ObjectiveConfig


@dataclass
class MaskedLMConfig(ObjectiveConfig):
    """Masking parameters (Devlin et al., 2019)."""

    probability: float = 0.15
    #: Mask every sub-word of a chosen word together (WordPiece ``##`` continuations).
    whole_word: bool = False


def chunk_texts(examples, tokenizer, max_length: int) -> list[dict]:
    """Each text tokenized and cut into windows of ``max_length`` tokens, framed by ``[CLS]`` ... ``[SEP]``."""
    body = max_length - 2
    encoded = tokenizer([e["text"] for e in examples], add_special_tokens=False, verbose=False)["input_ids"]
    return [
        {"input_ids": [tokenizer.cls_token_id, *ids[start : start + body], tokenizer.sep_token_id]}
        for ids in encoded
        for start in range(0, max(len(ids), 1), body)
        if ids[start : start + body]
    ]


class MaskedLM(Objective):
    """Predict the masked tokens; the targets are stored in the batch as ``mlm_labels``."""

    name = "mlm"
    task = "masked-lm"
    rides_along = True
    Config = MaskedLMConfig
    metric = "masked_accuracy"
    higher_is_better = True

    def validate(self, composition):
        from tessera.core.errors import IncompatibleError
        from tessera.core.models import is_decoder

        if is_decoder(composition.cfg.model):
            raise IncompatibleError(
                self.label,
                f"model={composition.cfg.model.name}",
                "masked language modelling needs an encoder (use objective=clm for decoders)",
            )

    def items(self, examples, tokenizer, max_length, seed):
        return chunk_texts(examples, tokenizer, max_length)

    def _continuation(self, tokenizer):
        """A boolean tensor over the vocabulary: is the token a word continuation (``##``)?"""
        import torch

        if getattr(self, "_continuation_cache", None) is None:
            vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            self._continuation_cache = torch.tensor([token.startswith("##") for token in vocabulary])
        return self._continuation_cache

    def transform(self, batch, tokenizer, generator):
        import torch

        input_ids = batch["input_ids"].cpu()
        special = torch.tensor(
            [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in input_ids.tolist()],
            dtype=torch.bool,
        ) | (batch["attention_mask"].cpu() == 0)
        draws = torch.rand(input_ids.shape, generator=generator)
        if self.config.whole_word:
            continuation = self._continuation(tokenizer)[input_ids] & ~special
            word_index = torch.cumsum((~continuation).long(), dim=1) - 1
            draws = torch.gather(draws, 1, word_index)  # every sub-word shares its word's draw
        chosen = (draws < self.config.probability) & ~special
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        action = torch.rand(input_ids.shape, generator=generator)
        masked = input_ids.clone()
        masked[chosen & (action < 0.8)] = tokenizer.mask_token_id
        randomised = chosen & (action >= 0.8) & (action < 0.9)
        masked[randomised] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomised]
        device = batch["input_ids"].device
        return {**batch, "input_ids": masked.to(device), "mlm_labels": labels.to(device)}

    @staticmethod
    def _logits(outputs):
        logits = getattr(outputs, "prediction_logits", None)  # a model with both pretraining heads
        return outputs.logits if logits is None else logits

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        logits = self._logits(outputs).flatten(0, 1).float()
        return F.cross_entropy(logits, batch["mlm_labels"].flatten(), ignore_index=IGNORE_INDEX)

    def evaluate(self, run, model, tokenizer, examples, split):
        """Mean loss and masked-token accuracy (the perplexity is added by the evaluation)."""
        from tessera.core.evaluate import evaluation_passes

        losses, correct, total = [], 0, 0
        for batch, outputs in evaluation_passes(run, self, model, tokenizer, examples):
            losses.append(self.loss(outputs, batch).item())
            chosen = batch["mlm_labels"] != IGNORE_INDEX
            correct += (self._logits(outputs).argmax(-1)[chosen] == batch["mlm_labels"][chosen]).sum().item()
            total += chosen.sum().item()
        return {"loss": sum(losses) / max(len(losses), 1), "masked_accuracy": correct / max(total, 1)}
