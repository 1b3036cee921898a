"""``kg_substitute``: replace nouns and verbs with a neighbour in the WordNet knowledge graph, a co-hyponym
(a sibling under the same hypernym: "comedy" -> "tragedy") or a hypernym (the broader term: "film" -> "show").

Only nouns and verbs have hypernym edges in WordNet, so adjectives and adverbs, where most of a review's
sentiment lives, are left alone. The graph is WordNet 3.0 through :func:`tessera.graphs.wordnet.wordnet`, and a
word is linked to the first (most frequent) sense of its guessed part of speech.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.core.errors import ConfigError
from tessera.plugins.augmenters.base import TextAugmenter, TextAugmenterConfig
from tessera.robustness.lexicon import NOUN, VERB, guess_pos, related
from tessera.robustness.words import STOP_WORDS, Words, match_case

RELATIONS = ("co_hyponym", "hypernym")


@dataclass
class KgSubstituteConfig(TextAugmenterConfig):
    """How many words are substituted, and through which relations."""

    #: Share of the linkable nouns and verbs substituted (at least one).
    rate: float = 0.15
    #: The relations a substitute may come through; each substitution picks one of them at random.
    relations: list[str] = field(default_factory=lambda: list(RELATIONS))
    copies: int = 2


class KgSubstitute(TextAugmenter):
    """Substitutes linked nouns and verbs with WordNet co-hyponyms or hypernyms."""

    name = "kg_substitute"
    Config = KgSubstituteConfig

    def validate(self, composition) -> None:
        super().validate(composition)
        unknown = sorted(set(self.config.relations) - set(RELATIONS))
        if unknown or not self.config.relations:
            raise ConfigError(
                f"augment.kg_substitute.relations={list(self.config.relations)}: choose from {', '.join(RELATIONS)}"
            )

    def vary(self, text: str, rng, copy: int) -> str | None:
        words = Words(text)
        listed = words.list()
        linked = []
        for index, word in enumerate(listed):
            if word.lower() in STOP_WORDS or word in self.protected:
                continue
            pos = guess_pos(listed, index)
            if pos in (NOUN, VERB):
                options = {
                    r: [w for w in related(word.lower(), pos, r) if w not in self.protected]
                    for r in self.config.relations
                }
                if any(options.values()):
                    linked.append((index, options))
        if not linked:
            return None
        count = max(1, round(self.config.rate * len(linked)))
        for index, options in rng.sample(linked, min(count, len(linked))):
            relation = rng.choice([r for r in self.config.relations if options[r]])
            words[index] = match_case(words[index], rng.choice(options[relation]))
        return words.text()
