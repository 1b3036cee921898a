"""``eda``: Easy Data Augmentation (Wei & Zou, 2019): synonym replacement, random insertion, random swap and
random deletion, one operation per augmented copy, as in the paper's reference code.

For a text of ``n`` words: synonym replacement changes ``max(1, alpha_sr * n)`` words to a WordNet synonym of
their guessed part of speech; random insertion puts a synonym of a random word at a random place,
``max(1, alpha_ri * n)`` times; random swap exchanges two words ``max(1, alpha_rs * n)`` times; random deletion
drops each word with probability ``p_rd`` (keeping at least one). Stop words are never replaced or used as
insertion sources, protected words are never replaced, moved or deleted, and an operation with rate 0 is off.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.plugins.augmenters.base import TextAugmenter, TextAugmenterConfig
from tessera.robustness.lexicon import guess_pos, synonyms
from tessera.robustness.words import STOP_WORDS, Words, match_case, rng_for

OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")


@dataclass
class EdaConfig(TextAugmenterConfig):
    """Rates of the four EDA operations (the paper's alpha; 0 turns an operation off)."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    copies: int = 4


class Eda(TextAugmenter):
    """Synonym replacement, random insertion, random swap, random deletion (Wei & Zou 2019)."""

    name = "eda"
    Config = EdaConfig

    def _rates(self) -> dict[str, float]:
        c = self.config
        return dict(zip(OPERATIONS, (c.alpha_sr, c.alpha_ri, c.alpha_rs, c.p_rd)))

    def variants(self, texts: list[str], seed: int) -> list[list[str]]:
        enabled = [operation for operation, rate in self._rates().items() if rate > 0]
        result = []
        for text in texts:
            plan = enabled * (self.config.copies // max(1, len(enabled)) + 1)
            rng_for(seed, self.name, "plan", text).shuffle(plan)
            result.append(
                [
                    self.apply(operation, text, rng_for(seed, self.name, copy, text))
                    for copy, operation in enumerate(plan[: self.config.copies])
                ]
            )
        return result

    def apply(self, operation: str, text: str, rng) -> str:
        """``text`` after one EDA ``operation`` drawn from ``rng``."""
        words = Words(text)
        count = max(1, int(self._rates()[operation] * len(words)))
        getattr(self, f"_{operation}")(words, count, rng)
        return words.text()

    def _candidates(self, words: Words) -> list[tuple[int, tuple[str, ...]]]:
        """``(position, synonyms)`` of the words that may be replaced: not stop words, not protected."""
        listed = words.list()
        found = []
        for index, word in enumerate(listed):
            lower = word.lower()
            if lower in STOP_WORDS or word in self.protected:
                continue
            pos = guess_pos(listed, index)
            options = tuple(s for s in (synonyms(lower, pos) if pos else ()) if s not in self.protected)
            if options:
                found.append((index, options))
        return found

    def _synonym_replacement(self, words: Words, count: int, rng) -> None:
        candidates = self._candidates(words)
        rng.shuffle(candidates)
        for index, options in candidates[:count]:
            words[index] = match_case(words[index], rng.choice(options))

    def _random_insertion(self, words: Words, count: int, rng) -> None:
        candidates = self._candidates(words)
        for _ in range(count if candidates else 0):
            _, options = rng.choice(candidates)
            words.insert_after(rng.randrange(-1, len(words)), rng.choice(options))

    def _movable(self, words: Words) -> list[int]:
        return [index for index, word in enumerate(words.list()) if word not in self.protected]

    def _random_swap(self, words: Words, count: int, rng) -> None:
        movable = self._movable(words)
        if len(movable) < 2:
            return
        for _ in range(count):
            first, second = rng.sample(movable, 2)
            words.swap(first, second)

    def _random_deletion(self, words: Words, count: int, rng) -> None:
        movable = self._movable(words)
        doomed = [index for index in movable if rng.random() < self.config.p_rd]
        if doomed and len(doomed) == len(words):
            doomed.remove(rng.choice(doomed))
        for index in sorted(doomed, reverse=True):
            words.delete(index)
