"""Words in a text, edited in place: separators (spaces, punctuation, digits) are kept as they are, so a
replacement changes one word and nothing else. Also the stop words, the protected words (negations by default),
and the screen that decides whether a text can be perturbed at all (empty, non-English).
"""

from __future__ import annotations

import random
import re

#: A word: letters (any script), with inner apostrophes ("isn't", "director's"), not glued to digits or
#: underscores ("21st" and "mp3" are not words and stay as they are).
_WORD = re.compile(r"(?<![\w'’])([^\W\d_]+(?:['’][^\W\d_]+)*)(?![\w'’])")

#: Words that EDA and the attacks never replace, insert next to as a synonym source, or rank (Wei & Zou's list).
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while "
    "of at by for with about against between into through during before after above below to from up down in out "
    "on off over under again further then once here there when where why how all any both each few more most "
    "other some such no nor not only own same so than too very s t can will just don should now".split()
)

#: The default protected words: negations, which flip the sentiment of what follows. An entry that starts with an
#: apostrophe protects every word ending in it ("n't" protects "isn't", "don't"...).
NEGATIONS = (
    "not",
    "no",
    "never",
    "nor",
    "neither",
    "none",
    "nobody",
    "nothing",
    "nowhere",
    "cannot",
    "without",
    "hardly",
    "barely",
    "scarcely",
    "'n't",
)


class Protected:
    """A protected-word list: whole words (case-insensitive) and apostrophe-suffix entries such as ``'n't``."""

    def __init__(self, entries):
        entries = [entry.lower() for entry in entries]
        self.words = frozenset(e for e in entries if not e.startswith("'"))
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("'"))

    def __contains__(self, word: str) -> bool:
        lower = word.lower().replace("’", "'")
        return lower in self.words or (bool(self.suffixes) and lower.endswith(self.suffixes))


def match_case(original: str, replacement: str) -> str:
    """``replacement`` with the capitalisation of ``original`` (lower, Title or UPPER)."""
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class Words:
    """A text as alternating separators and words; edits keep the separators, so the rest of the text is intact.

    ``pieces`` holds separator, word, separator, ..., separator; word ``i`` is ``pieces[2 * i + 1]``.
    """

    def __init__(self, text: str):
        self.pieces = _WORD.split(text)
        stripped = text.strip()
        self._outer = (text[: len(text) - len(text.lstrip())], text[len(stripped) + len(text) - len(text.lstrip()) :])

    def __len__(self) -> int:
        return len(self.pieces) // 2

    def __getitem__(self, index: int) -> str:
        return self.pieces[2 * index + 1]

    def __setitem__(self, index: int, word: str) -> None:
        self.pieces[2 * index + 1] = word

    def list(self) -> list[str]:
        """The words, in order."""
        return self.pieces[1::2]

    def spans(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` character offsets of the words in the text as it was given (before any edit)."""
        spans, position = [], 0
        for number, piece in enumerate(self.pieces):
            if number % 2:
                spans.append((position, position + len(piece)))
            position += len(piece)
        return spans

    def copy(self) -> Words:
        """An independent copy."""
        clone = Words("")
        clone.pieces, clone._outer = list(self.pieces), self._outer
        return clone

    def delete(self, index: int) -> None:
        """Remove word ``index``; the separators around it merge, runs of spaces collapsing to one."""
        before, after = self.pieces[2 * index], self.pieces[2 * index + 2]
        self.pieces[2 * index : 2 * index + 3] = [re.sub(r"\s+", " ", before + after)]

    def insert_after(self, index: int, word: str) -> None:
        """Insert ``word`` after word ``index`` (before the first word when ``index`` is -1), with a space."""
        if index < 0:
            self.pieces[1:1] = [word, " "]
        else:
            self.pieces[2 * index + 2 : 2 * index + 2] = [" ", word]

    def swap(self, first: int, second: int) -> None:
        """Exchange two words."""
        self[first], self[second] = self[second], self[first]

    def text(self) -> str:
        """The edited text, with the outer whitespace of the original."""
        return self._outer[0] + "".join(self.pieces).strip() + self._outer[1]


def rng_for(*parts) -> random.Random:
    """A random generator seeded from ``parts`` (a seed, a technique, a text...): the same on every machine and
    in every process, and independent of the order in which texts are processed."""
    return random.Random("\x1f".join(map(str, parts)))


def is_english_word(word: str) -> bool:
    """Whether ``word`` is an English stop word or has a WordNet entry (possessive and "n't" endings ignored)."""
    from tessera.robustness.lexicon import known

    lower = word.lower().replace("’", "'")
    for ending in ("'s", "n't", "'re", "'ve", "'ll", "'d", "'m"):
        if lower.endswith(ending) and len(lower) > len(ending):
            lower = lower[: -len(ending)]
            break
    return lower.isascii() and (lower in STOP_WORDS or known(lower))


#: Share of a text's words that must be English (stop word or WordNet entry) for it to count as English.
ENGLISH_SHARE = 0.6


def screen(text: str) -> str | None:
    """Why ``text`` cannot be perturbed: ``"empty"``, ``"non_english"``, or ``None`` when it can."""
    if not text or not text.strip():
        return "empty"
    words = Words(text).list()
    if not words:
        return None  # digits and punctuation only: nothing to replace, which the technique counts
    english = sum(is_english_word(word) for word in words)
    return None if english >= ENGLISH_SHARE * len(words) else "non_english"
