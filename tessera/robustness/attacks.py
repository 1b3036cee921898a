"""Black-box attacks on a text classifier: greedy word substitution under a query budget (TextFooler / PWWS
style) with WordNet synonyms or one-character typos.

For each example the classifier gets right: the words it may change (not stop words, not protected, with at
least one substitute) are ranked by importance, the drop in the true class's probability when the word is deleted
(one query per word). Then, most important first, each word's substitutes are tried (one query each): a substitute
that flips the prediction and passes the similarity constraint ends the attack (the most similar one is taken);
otherwise the substitute that lowers the true class's probability most is kept and the next word is tried. The
attack stops at the query budget or when ``max_perturbed`` of the words have changed.

Similarity constraint (``synonym`` only): the cosine similarity of the sentence embeddings of the original and the
perturbed text, all-MiniLM-L6-v2 (the packaged ``minilm`` asset) with mean pooling as sentence-transformers
does, must be at least ``min_similarity``; ``similarity=none`` turns it off. A word-level constraint may be added:
``min_word_similarity`` above 0 keeps only substitutes whose MiniLM embedding (the word on its own) has at least
that cosine similarity to the replaced word's (TextFooler's word-embedding constraint, with MiniLM in place of
counter-fitted GloVe vectors). The ``charnoise`` attack is bounded by one edit per word and ``max_perturbed``
instead (embeddings of misspelt words mean little).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tessera.robustness import typos
from tessera.robustness.lexicon import guess_pos, synonyms
from tessera.robustness.words import NEGATIONS, STOP_WORDS, Protected, Words, match_case, rng_for, screen

ATTACKS = ("synonym", "charnoise")


@dataclass
class AttackConfig:
    """The options of ``tessera eval RUN_DIR key=value ...``."""

    #: ``synonym``, ``charnoise``, both (``synonym,charnoise``) or ``none`` (clean accuracy only).
    attack: str = "synonym"
    #: Examples of the split evaluated (its first N); null for all of them.
    examples: Optional[int] = 200
    split: str = "test"
    #: Model queries allowed per example (the importance ranking included).
    query_budget: int = 200
    #: Substitutes tried per word.
    max_candidates: int = 8
    #: Most of an example's words that may change.
    max_perturbed: float = 0.25
    #: ``minilm`` (sentence-embedding cosine) or ``none``.
    similarity: str = "minilm"
    min_similarity: float = 0.8
    #: The least cosine similarity between a substitute's MiniLM embedding and the replaced word's (``synonym``
    #: only); 0 turns the word-level constraint off.
    min_word_similarity: float = 0.0
    protected: list[str] = field(default_factory=lambda: list(NEGATIONS))
    batch_size: int = 64
    seed: int = 0


class Victim:
    """The classifier under attack: class probabilities of texts, with a count of the texts it was asked about."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.queries = 0

    def probabilities(self, texts: list[str]):
        """A ``[len(texts), classes]`` numpy array of probabilities."""
        import numpy as np
        import torch

        self.queries += len(texts)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(self.model.device)
                chunks.append(torch.softmax(self.model(**batch).logits.float(), -1).double().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.num_labels))


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) from the packaged ``minilm`` asset."""

    def __init__(self, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        from tessera.core.assets import asset_path

        path = asset_path("minilm")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        #: Embeddings of the single words :meth:`word_similarity` has seen.
        self.words: dict = {}

    def embed(self, texts: list[str]):
        """A ``[len(texts), 384]`` numpy array of unit vectors."""
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    truncation=True,
                    max_length=128,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 384))

    def similarity(self, original: str, texts: list[str]):
        """Cosine similarity of each text to ``original``."""
        vectors = self.embed([original, *texts])
        return vectors[1:] @ vectors[0]

    def remember(self, words) -> None:
        """Embed the ``words`` (each on its own, lower case) not embedded yet, in one batch."""
        missing = [w for w in dict.fromkeys(word.lower() for word in words) if w not in self.words]
        if missing:
            self.words.update(zip(missing, self.embed(missing)))

    def word_similarity(self, word: str, substitutes: list[str]) -> list[float]:
        """Cosine similarity of each substitute to ``word``, all embedded on their own (lower case, cached)."""
        self.remember([word, *substitutes])
        reference = self.words[word.lower()]
        return [float(self.words[s.lower()] @ reference) for s in substitutes]


@dataclass
class AttackResult:
    """One example's outcome: ``status`` is ``success``, ``failed``, ``misclassified`` (wrong before any
    attack) or ``skipped`` (``reason``: ``empty``, ``non_english``, ``no_replaceable_word``; left unchanged)."""

    text: str
    adversarial: str
    label: int
    clean_prediction: int
    prediction: int
    status: str
    reason: Optional[str] = None
    words: int = 0
    perturbed: int = 0
    queries: int = 0
    similarity: Optional[float] = None
    #: Whether the attack stopped because the query budget ran out.
    exhausted: bool = False


def synonym_substitutes(listed: list[str], index: int, protected: Protected, limit: int) -> list[str]:
    """Single-word WordNet synonyms that word ``index`` of ``listed`` may become in its context (its guessed part of
    speech, its inflection and capitalisation), at most ``limit``; none for stop words and ``protected`` words.
    Shared by the attack and the ``a2t`` adversary, so training and evaluation perturb alike."""
    word = listed[index]
    if word.lower() in STOP_WORDS or word in protected:
        return []
    pos = guess_pos(listed, index)
    found = synonyms(word.lower(), pos, multiword=False) if pos else ()
    return [match_case(word, s) for s in found if s not in protected][:limit]


class GreedyAttack:
    """The greedy word-substitution attack; ``kind`` is ``synonym`` or ``charnoise``."""

    def __init__(self, kind: str, victim: Victim, config: AttackConfig, encoder: SentenceEncoder | None = None):
        if kind not in ATTACKS:
            raise ValueError(f"unknown attack {kind!r}")
        self.kind, self.victim, self.config, self.encoder = kind, victim, config, encoder
        self.protected = Protected(config.protected)

    def substitutes(self, listed: list[str], index: int, text: str) -> list[str]:
        """What word ``index`` may become (at most ``max_candidates``), in its original capitalisation."""
        word = listed[index]
        if word.lower() in STOP_WORDS or word in self.protected:
            return []
        if self.kind == "charnoise":
            if len(word) < 3:
                return []
            rng = rng_for(self.config.seed, self.kind, index, text)
            return typos.variants(word, typos.OPERATIONS, rng, self.config.max_candidates)
        return synonym_substitutes(listed, index, self.protected, self.config.max_candidates)

    def constrained(self, word: str, substitutes: list[str]) -> list[str]:
        """The substitutes that pass the word-similarity constraint (all of them when it is off)."""
        if self.kind != "synonym" or self.config.min_word_similarity <= 0 or self.encoder is None:
            return substitutes
        scores = self.encoder.word_similarity(word, substitutes)
        return [s for s, score in zip(substitutes, scores) if score >= self.config.min_word_similarity]

    def run(self, text: str, label: int) -> AttackResult:
        """Attack one example."""
        import numpy as np

        start_queries = self.victim.queries
        clean = self.victim.probabilities([text])[0]
        prediction = int(clean.argmax())
        result = AttackResult(text, text, label, prediction, prediction, "skipped")

        def done(status, reason=None):
            result.status, result.reason = status, reason
            result.queries = self.victim.queries - start_queries
            return result

        reason = screen(text)
        if reason:
            return done("skipped", reason)
        if prediction != label:
            return done("misclassified")
        words = Words(text)
        listed = words.list()
        result.words = len(listed)
        options = {i: self.substitutes(listed, i, text) for i in range(len(listed))}
        positions = [i for i, found in options.items() if found]
        if not positions:
            return done("skipped", "no_replaceable_word")
        budget = self.config.query_budget
        deleted = []
        for i in positions:
            shorter = words.copy()
            shorter.delete(i)
            deleted.append(shorter.text())
        drops = clean[label] - self.victim.probabilities(deleted)[:, label]
        order = [positions[k] for k in np.argsort(-drops, kind="stable")]
        current, current_p = words.copy(), clean[label]
        limit = max(1, int(self.config.max_perturbed * len(listed)))
        for i in order:
            left = budget - (self.victim.queries - start_queries)
            if left <= 0 or result.perturbed >= limit:
                result.exhausted = left <= 0
                break
            candidates = self.constrained(listed[i], options[i])[:left]
            if not candidates:
                continue
            trials = []
            for substitute in candidates:
                trial = current.copy()
                trial[i] = substitute
                trials.append(trial)
            texts = [trial.text() for trial in trials]
            probabilities = self.victim.probabilities(texts)
            allowed = np.ones(len(texts), dtype=bool)
            similarity = None
            if self.kind == "synonym" and self.encoder is not None and self.config.similarity == "minilm":
                similarity = self.encoder.similarity(text, texts)
                allowed = similarity >= self.config.min_similarity
            flipped = allowed & (probabilities.argmax(1) != label)
            if flipped.any():
                best = int(np.argmax(np.where(flipped, similarity if similarity is not None else 1.0, -np.inf)))
                result.perturbed += 1
                result.adversarial, result.prediction = texts[best], int(probabilities[best].argmax())
                result.similarity = None if similarity is None else float(similarity[best])
                return done("success")
            if allowed.any():
                best = int(np.argmin(np.where(allowed, probabilities[:, label], np.inf)))
                if probabilities[best, label] < current_p:
                    current, current_p = trials[best], probabilities[best, label]
                    result.perturbed += 1
                    result.adversarial = texts[best]
                    result.similarity = None if similarity is None else float(similarity[best])
        return done("failed")


def summarize(results: list[AttackResult]) -> dict:
    """Clean accuracy, accuracy under attack, attack success rate (successes over attempted attacks), mean share
    of words perturbed in successful attacks, queries per example (over all examples, over the attacked ones and
    over the successful ones), the failed attacks that ran out of query budget, and the counts of each status and
    skip reason."""
    total = len(results)
    count = lambda status: sum(r.status == status for r in results)  # noqa: E731
    successes, failures = count("success"), count("failed")
    correct_clean = sum(r.clean_prediction == r.label for r in results)
    correct_attacked = sum(r.prediction == r.label for r in results)
    succeeded = [r for r in results if r.status == "success"]
    skipped: dict[str, int] = {"empty": 0, "non_english": 0, "no_replaceable_word": 0}
    for r in results:
        if r.status == "skipped":
            skipped[r.reason] += 1
    return {
        "examples": total,
        "clean_accuracy": correct_clean / total if total else None,
        "accuracy_under_attack": correct_attacked / total if total else None,
        "attack_success_rate": successes / (successes + failures) if successes + failures else None,
        "mean_perturbed_share": (sum(r.perturbed / r.words for r in succeeded) / len(succeeded) if succeeded else None),
        "mean_queries": sum(r.queries for r in results) / total if total else None,
        "mean_queries_attacked": _mean([r.queries for r in results if r.status in ("success", "failed")]),
        "mean_queries_per_success": _mean([r.queries for r in succeeded]),
        "budget_exhausted": sum(r.exhausted for r in results if r.status == "failed"),
        "successes": successes,
        "failures": failures,
        "misclassified": count("misclassified"),
        "skipped": skipped,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
