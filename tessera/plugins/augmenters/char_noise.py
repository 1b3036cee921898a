"""``char_noise``: keyboard typos and character-level noise (neighbouring-key substitution, deletion, insertion,
swap of neighbours), one edit in each chosen word."""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.core.errors import ConfigError
from tessera.plugins.augmenters.base import TextAugmenter, TextAugmenterConfig
from tessera.robustness import typos
from tessera.robustness.words import Words


@dataclass
class CharNoiseConfig(TextAugmenterConfig):
    """Which words get a character edit, and which edits."""

    #: Share of the eligible words edited (at least one).
    word_rate: float = 0.1
    #: Words shorter than this are left alone.
    min_word_length: int = 3
    operations: list[str] = field(default_factory=lambda: list(typos.OPERATIONS))


class CharNoise(TextAugmenter):
    """One character edit in ``word_rate`` of the words (at least one), never in protected words."""

    name = "char_noise"
    Config = CharNoiseConfig

    def validate(self, composition) -> None:
        super().validate(composition)
        unknown = sorted(set(self.config.operations) - set(typos.OPERATIONS))
        if unknown or not self.config.operations:
            raise ConfigError(
                f"augment.char_noise.operations={list(self.config.operations)}: choose from "
                f"{', '.join(typos.OPERATIONS)}"
            )

    def vary(self, text: str, rng, copy: int) -> str | None:
        words = Words(text)
        eligible = [
            index
            for index, word in enumerate(words.list())
            if len(word) >= self.config.min_word_length and word not in self.protected
        ]
        if not eligible:
            return None
        count = max(1, round(self.config.word_rate * len(eligible)))
        for index in sorted(rng.sample(eligible, min(count, len(eligible)))):
            words[index] = typos.edit(words[index], rng.choice(self.config.operations), rng)
        return words.text()
