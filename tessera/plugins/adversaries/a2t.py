"""``adversary=a2t``: attack-based adversarial training (after Yoo & Qi 2021, "Towards Improving Adversarial
Training of NLP Models", A2T).

Unlike the embedding-space adversaries, a2t trains on real word substitutions, the kind of perturbation that
``tessera eval RUN attack=synonym`` measures. At every step (from ``start_epoch`` on) a cheap attack turns
``share`` of the batch's labelled examples into adversarial examples, on the fly:

1. the batch's token ids are decoded into text and cut into words (:class:`~tessera.robustness.words.Words`);
2. each word's importance is the norm of the loss gradient with respect to its tokens' embeddings, recorded by
   the embedding hook in the trainer's own forward pass (so it costs nothing when the text re-encodes to the
   same tokens; otherwise one more gradient pass on the attacked examples);
3. most important first, at most ``max_perturbed`` of the words are replaced by a substitute: single-word WordNet
   synonyms in the word's part of speech and inflection (``candidates=wordnet``: the very substitutes of the
   synonym attack, :func:`~tessera.robustness.attacks.synonym_substitutes`) or the word's nearest neighbours in
   the model's own input-embedding matrix (``candidates=embedding``, WordNet antonyms excluded). ``search=gradient``
   picks the substitute with the largest first-order increase of the loss (no extra forward pass);
   ``search=greedy`` queries the model on every substitute of the word (one batched forward per word rank) and
   keeps the one with the highest loss, stopping once the prediction flips;
4. the loss on the perturbed examples, times ``weight``, is back-propagated beside the clean loss.

Negations and the other ``protected`` words are never replaced. What it did goes to ``RUN_DIR/adversary/a2t.json``
at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera import hookimpl
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.files import write_json
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adversaries.base import EmbeddingAdversary
from tessera.robustness.words import NEGATIONS, STOP_WORDS, Protected, Words, match_case, rng_for

CANDIDATES = ("wordnet", "embedding")
SEARCHES = ("gradient", "greedy")


@dataclass
class A2TConfig(TechniqueConfig):
    """The attack's budget, its candidates and search, and when it starts."""

    #: Share of each batch's labelled examples that are attacked.
    share: float = 0.5
    #: Most of an example's words that may be substituted (at least one word).
    max_perturbed: float = 0.2
    #: Substitutes considered per word.
    max_candidates: int = 8
    #: ``wordnet`` (the synonym attack's substitutes) or ``embedding`` (the model's input-embedding neighbours).
    candidates: str = "wordnet"
    #: ``candidates=embedding``: the least cosine similarity between a word's embedding and a neighbour's.
    min_embedding_similarity: float = 0.5
    #: The least cosine similarity between the MiniLM embeddings of a word and of its substitute, each on its own
    #: (the word-level constraint of ``tessera eval``); 0: no constraint.
    min_word_similarity: float = 0.0
    #: ``gradient`` (first-order estimate of the loss, no extra pass) or ``greedy`` (model queries per word).
    search: str = "gradient"
    #: The epoch (fractional, as the step metrics count it) from which on batches are attacked; clean before.
    start_epoch: float = 0.0
    #: Weight of the adversarial examples' loss beside the clean loss.
    weight: float = 1.0
    protected: list[str] = field(default_factory=lambda: list(NEGATIONS))


class A2T(EmbeddingAdversary):
    """Attack-based adversarial training on word substitutions (A2T, Yoo & Qi 2021)."""

    name = "a2t"
    Config = A2TConfig

    def __init__(self, config):
        super().__init__(config)
        self.protected = Protected(config.protected)
        self.cfg = None
        self.tokenizer = None
        self.step_number, self.calls, self.epoch = 0, 0, 0.0
        self.neighbour_table = None
        self.encoder = None
        self.neighbour_cache: dict[str, list[str]] = {}
        self.word_ids_cache: dict[str, list[int]] = {}
        self.counts = {"attacked": 0, "perturbed": 0, "words_substituted": 0, "queries": 0, "gradient_passes": 0}

    def validate(self, composition) -> None:
        config, prefix = self.config, "adversary.a2t"
        if config.candidates not in CANDIDATES:
            raise ConfigError(f"{prefix}.candidates={config.candidates}: choose {' or '.join(CANDIDATES)}")
        if config.search not in SEARCHES:
            raise ConfigError(f"{prefix}.search={config.search}: choose {' or '.join(SEARCHES)}")
        for key in ("share", "max_perturbed"):
            if not 0 < getattr(config, key) <= 1:
                raise ConfigError(f"{prefix}.{key}={getattr(config, key)}: set it in (0, 1]")
        if not 0 <= config.min_word_similarity <= 1:
            raise ConfigError(f"{prefix}.min_word_similarity={config.min_word_similarity}: set it in [0, 1]")
        if config.max_candidates < 1 or config.start_epoch < 0 or config.weight <= 0:
            raise ConfigError(f"{prefix}: max_candidates must be 1 or more, start_epoch >= 0 and weight > 0")
        if composition.task != "sequence-classification":
            objective = composition.selected("objective")[0]
            raise IncompatibleError(self.label, objective.label, "a2t attacks the labels of a sequence classifier")
        aggregators = composition.selected("aggregator")
        if aggregators and config.start_epoch > 0:
            raise IncompatibleError(
                self.label,
                aggregators[0].label,
                "federated clients fire no step events: set adversary.a2t.start_epoch=0",
            )
        self.cfg = composition.cfg

    # --- events ---------------------------------------------------------------------------------------------

    @hookimpl
    def tessera_run_start(self, run):
        super().tessera_run_start(run)
        self.step_number = run.start_step

    @hookimpl
    def tessera_step_end(self, run, step, metrics):
        self.step_number, self.calls, self.epoch = step, 0, metrics.get("epoch", self.epoch)

    @hookimpl
    def tessera_run_end(self, run, status, metrics):
        super().tessera_run_end(run, status, metrics)
        if run is not None and run.dir is not None and run.is_main and status == "complete":
            write_json(run.dir / "adversary" / "a2t.json", self.report())

    def report(self) -> dict:
        """What the attack did in the run: examples attacked and perturbed, words substituted, queries."""
        perturbed = self.counts["perturbed"]
        return {
            **self.counts,
            "mean_words_substituted": self.counts["words_substituted"] / perturbed if perturbed else 0.0,
            "config": {"candidates": self.config.candidates, "search": self.config.search},
        }

    # --- the backward seam ------------------------------------------------------------------------------------

    def backward(self, step, loss) -> None:
        hook = self._embedding_hook(step)
        step.backward(loss)
        self.calls += 1
        rows = self._rows(step.batch) if self.epoch >= self.config.start_epoch else []
        if not rows:
            hook.recorded = []
            return
        gradient = hook.clean_gradient((*step.batch["input_ids"].shape, hook.module.weight.shape[-1]))
        examples = [self._example(step.batch, row, gradient) for row in rows]
        self._fill_gradients(step, [e for e in examples if e.gradient is None])
        self._prepare_neighbours(step)
        self._prepare_candidates(examples)
        if self.config.search == "greedy":
            self._greedy(step, examples)
        else:
            for example in examples:
                self._gradient_search(example)
        changed = [e for e in examples if e.substituted]
        self.counts["attacked"] += len(examples)
        self.counts["perturbed"] += len(changed)
        self.counts["words_substituted"] += sum(e.substituted for e in changed)
        if changed:
            batch = self._batch([e.words.text() for e in changed], [e.label for e in changed], step)
            step.backward(step.compute_loss(batch) * self.config.weight)
        hook.recorded = []

    def _rows(self, batch) -> list[int]:
        """The labelled rows of ``batch`` to attack: ``share`` of them, drawn from the seed and the step."""
        labels = batch.get("labels")
        if labels is None or labels.dim() != 1:
            return []
        labelled = [row for row, label in enumerate(labels.tolist()) if label >= 0]
        count = min(len(labelled), max(1, round(self.config.share * len(labelled)))) if labelled else 0
        rng = rng_for(self.cfg.trainer.seed if self.cfg else 0, self.name, self.step_number, self.calls)
        return sorted(rng.sample(labelled, count))

    # --- words and tokens ----------------------------------------------------------------------------------

    def _tokenizer(self):
        if self.tokenizer is None:
            from tessera.core.models import load_tokenizer

            if self.cfg is None:
                raise ConfigError("adversary=a2t was not validated with its composition: run it through tessera train")
            self.tokenizer = load_tokenizer(self.cfg.model)
        return self.tokenizer

    def _max_length(self):
        length = self.cfg.data.max_length if self.cfg is not None else None
        return length if isinstance(length, int) else None

    def _example(self, batch, row: int, gradient) -> _Example:
        """Row ``row`` of ``batch`` as text and words, with its tokens' gradient when the text re-encodes to the
        batch's very tokens (else ``gradient`` is left for :meth:`_fill_gradients`)."""
        tokenizer = self._tokenizer()
        mask = batch.get("attention_mask")
        ids = batch["input_ids"][row]
        ids = ids[mask[row].bool()] if mask is not None else ids
        text = tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
        encoded = self._encode(text)
        example = _Example(
            text, Words(text), int(batch["labels"][row]), encoded["input_ids"], encoded["offset_mapping"]
        )
        if gradient is not None and encoded["input_ids"] == ids.tolist():
            example.gradient = gradient[row, : len(ids)].detach().float()
        return example

    def _encode(self, text: str) -> dict:
        length = self._max_length()
        return self._tokenizer()(
            text, truncation=length is not None, max_length=length, return_offsets_mapping=True
        ).data

    def _fill_gradients(self, step, examples: list[_Example]) -> None:
        """The embedding gradients of examples whose text re-encodes to other tokens: one more gradient pass."""
        if not examples:
            return
        import torch

        batch = self._batch([e.text for e in examples], [e.label for e in examples], step)
        hook = self._embedding_hook(step)
        leaf = torch.zeros(*batch["input_ids"].shape, hook.module.weight.shape[-1], device=hook.module.weight.device)
        leaf.requires_grad_(True)
        with hook.perturbed(leaf):
            loss = step.compute_loss(batch)
        gradient = torch.autograd.grad(loss, leaf)[0].detach().float()
        self.counts["gradient_passes"] += 1
        for row, example in enumerate(examples):
            example.gradient = gradient[row, : len(example.ids)]

    def _batch(self, texts: list[str], labels: list[int], step) -> dict:
        """A training batch of ``texts`` with their labels, padded as the trainer pads."""
        from tessera.core.batching import collate

        tokenizer = self._tokenizer()
        items = [{"input_ids": self._encode(text)["input_ids"], "labels": label} for text, label in zip(texts, labels)]
        return collate(items, list(range(len(items))), tokenizer.pad_token_id, step.accelerator.device)

    # --- candidates ------------------------------------------------------------------------------------------

    def _prepare_candidates(self, examples: list[_Example]) -> None:
        """Every word's substitutes, the word-level constraint applied (the words embedded in one batch)."""
        for example in examples:
            example.substitutes = [self._substitutes(example, index) for index in range(len(example.original))]
        if self.config.min_word_similarity <= 0:
            return
        if self.encoder is None:
            from tessera.robustness.attacks import SentenceEncoder

            self.encoder = SentenceEncoder()
        self.encoder.remember(
            word
            for example in examples
            for index, found in enumerate(example.substitutes)
            if found
            for word in [example.original[index], *found]
        )
        for example in examples:
            example.substitutes = [
                [
                    s
                    for s, score in zip(found, self.encoder.word_similarity(word, found))
                    if score >= self.config.min_word_similarity
                ]
                if found
                else found
                for word, found in zip(example.original, example.substitutes)
            ]

    def _substitutes(self, example: _Example, index: int) -> list[str]:
        listed = example.original
        if self.config.candidates == "wordnet":
            from tessera.robustness.attacks import synonym_substitutes

            return synonym_substitutes(listed, index, self.protected, self.config.max_candidates)
        word = listed[index]
        if word.lower() in STOP_WORDS or word in self.protected:
            return []
        return [match_case(word, n) for n in self._neighbours(word.lower())]

    def _neighbours(self, word: str) -> list[str]:
        """The nearest neighbours of a one-token ``word`` in the model's input embeddings (cosine at least
        ``min_embedding_similarity``), as whole words that are no stop word, protected word or WordNet antonym."""
        cached = self.neighbour_cache.get(word)
        if cached is not None:
            return cached
        import torch

        from tessera.robustness.lexicon import antonyms

        tokenizer, table = self._tokenizer(), self.neighbour_table
        ids = self._word_ids(word)
        found: list[str] = []
        if len(ids) == 1:
            similarities = table @ table[ids[0]]
            scores, order = torch.topk(similarities, min(len(similarities), 20 * self.config.max_candidates + 1))
            banned = antonyms(word)
            for score, candidate_id in zip(scores.tolist(), order.tolist()):
                if score < self.config.min_embedding_similarity or len(found) >= self.config.max_candidates:
                    break
                candidate = tokenizer.decode([candidate_id]).strip().lower()
                if (
                    candidate_id != ids[0]
                    and candidate.isalpha()
                    and len(candidate) > 1
                    and candidate != word
                    and candidate not in STOP_WORDS
                    and candidate not in self.protected
                    and candidate not in banned
                    and candidate not in found
                    and self._word_ids(candidate) == [candidate_id]
                ):
                    found.append(candidate)
        self.neighbour_cache[word] = found
        return found

    def _word_ids(self, word: str) -> list[int]:
        """The token ids of ``word`` as a word inside a text (after a space)."""
        if word not in self.word_ids_cache:
            self.word_ids_cache[word] = self._tokenizer()(" " + word, add_special_tokens=False)["input_ids"]
        return self.word_ids_cache[word]

    def _prepare_neighbours(self, step) -> None:
        if self.config.candidates == "embedding" and self.neighbour_table is None:
            import torch

            weight = self._embedding_hook(step).module.weight.detach().float()
            self.neighbour_table = torch.nn.functional.normalize(weight, dim=-1)

    # --- search ----------------------------------------------------------------------------------------------

    def _ranked(self, example: _Example) -> list[tuple[int, list[str], list[int]]]:
        """``(word index, substitutes, token positions)`` of the words that can change, most important first, cut
        to the budget."""
        import bisect

        spans = example.words.spans()
        starts = [start for start, _ in spans]
        positions: dict[int, list[int]] = {}
        for token, (start, end) in enumerate(example.offsets):
            if end > start:
                index = bisect.bisect_right(starts, start) - 1
                if index >= 0 and start < spans[index][1]:
                    positions.setdefault(index, []).append(token)
        norms = example.gradient.norm(dim=-1)
        found = []
        for index, tokens in positions.items():
            substitutes = example.substitutes[index]
            if substitutes:
                found.append((float(norms[tokens].sum()), index, substitutes, tokens))
        found.sort(key=lambda entry: -entry[0])
        budget = max(1, int(self.config.max_perturbed * len(spans)))
        return [(index, substitutes, tokens) for _, index, substitutes, tokens in found[:budget]]

    def _gradient_search(self, example: _Example) -> None:
        """Replace each ranked word by the substitute with the largest first-order increase of the loss,
        ``(mean embedding of the substitute's tokens - the word's token embeddings) . gradient``, when positive."""
        import torch

        embeddings = self.embedding_weight
        for index, substitutes, tokens in self._ranked(example):
            original = embeddings[[example.ids[t] for t in tokens]]
            gradient = example.gradient[tokens]
            gains = []
            for substitute in substitutes:
                ids = self._word_ids(substitute)
                mean = embeddings[ids].mean(0) if ids else original.mean(0)
                gains.append(float(((mean - original) * gradient).sum()))
            best = int(torch.tensor(gains).argmax())
            if gains[best] > 0:
                example.words[index] = substitutes[best]
                example.substituted += 1

    def _greedy(self, step, examples: list[_Example]) -> None:
        """Word rank by word rank, query the model on every substitute of every attacked example at once and keep
        the substitute with the highest loss if it raises the example's loss; an example whose prediction flipped
        is done."""
        import torch
        import torch.nn.functional as F

        ranked = [self._ranked(example) for example in examples]
        current = [None] * len(examples)
        model = step.model
        was_training = model.training
        model.eval()
        try:
            for rank in range(max((len(r) for r in ranked), default=0)):
                trials, owners = [], []
                for number, (example, words) in enumerate(zip(examples, ranked)):
                    if rank >= len(words) or example.flipped:
                        continue
                    index, substitutes, _ = words[rank]
                    for substitute in [None, *substitutes] if current[number] is None else substitutes:
                        trial = example.words.copy()
                        if substitute is not None:
                            trial[index] = substitute
                        trials.append((trial, index, substitute))
                        owners.append(number)
                if not trials:
                    break
                batch = self._batch([t[0].text() for t in trials], [examples[n].label for n in owners], step)
                with torch.no_grad():
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none").tolist()
                    flipped = (logits.argmax(-1) != batch["labels"]).tolist()
                self.counts["queries"] += len(trials)
                best: dict[int, int] = {}
                for position, number in enumerate(owners):
                    if trials[position][2] is None:
                        current[number] = losses[position]
                    elif number not in best or losses[position] > losses[best[number]]:
                        best[number] = position
                for number, position in best.items():
                    if losses[position] > current[number]:
                        trial, index, substitute = trials[position]
                        examples[number].words[index] = substitute
                        examples[number].substituted += 1
                        examples[number].flipped = flipped[position]
                        current[number] = losses[position]
        finally:
            model.train(was_training)

    @property
    def embedding_weight(self):
        return self.hook.module.weight.detach().float()


@dataclass
class _Example:
    """One attacked example: its decoded text, the words being edited, label, tokens and their gradient."""

    text: str
    words: Words
    label: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    gradient: object = None
    substituted: int = 0
    flipped: bool = False
    #: The words before any substitution (the context the substitutes are chosen in), and their substitutes.
    original: list[str] = field(default_factory=list)
    substitutes: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        self.original = self.words.list()
