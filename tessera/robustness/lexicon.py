"""WordNet as a lexicon for perturbations: a part-of-speech guess from context, synonyms in that part of speech
(inflected like the word they replace), and related words (hypernyms, co-hyponyms) for knowledge-graph
substitution. WordNet is read only through :func:`tessera.graphs.wordnet.wordnet`.

NLTK's statistical POS tagger needs data that cannot be fetched offline, so the part of speech is guessed from
WordNet itself and a few closed-class cues: the word's possible parts of speech in WordNet, its neighbours
("the _ film" is an adjective, "to _" a verb), its ending ("-ly", "-ing", "-ed"), and otherwise the part of
speech with the most senses. Synonyms come from the first senses of the guessed part of speech only, so "like"
after "would" gets verb synonyms ("wish"), never the adjective's ("similar").
"""

from __future__ import annotations

import functools
import re

NOUN, VERB, ADJECTIVE, ADVERB = "n", "v", "a", "r"
#: Tie-break order when the cues do not decide.
_ORDER = (NOUN, VERB, ADJECTIVE, ADVERB)

_DETERMINERS = frozenset(
    "the a an this that these those my your his her its our their some any every each no another such".split()
)
_VERB_CUES = frozenset(
    "to will would can could should may might must shall do does did don't doesn't didn't won't wouldn't can't "
    "couldn't shouldn't cannot i we you they".split()
)
_ADJECTIVE_CUES = frozenset(
    "is are was were be been being am seems seem seemed looks look feel feels very so too quite rather really "
    "more most less least pretty fairly".split()
)
#: Regular inflections carried from a word to its synonym ("movies" -> "films"), by their canonical suffix.
_SUFFIXES = ("s", "ed", "ing")
#: A lemma ending consonant-vowel-consonant may double its last letter before -ed / -ing ("get" -> "getting"):
#: such synonyms are skipped for those suffixes rather than misspelt.
_DOUBLING = re.compile(r"[^aeiou][aeiou][^aeiouwxy]$")
#: Senses of a word consulted for synonyms: later senses are rare and drift in meaning.
SENSES = 3


def _wordnet():
    from tessera.graphs.wordnet import wordnet

    return wordnet()


@functools.lru_cache(maxsize=200_000)
def parts_of_speech(word: str) -> dict[str, int]:
    """``{pos: number of senses}`` of ``word`` (lower case) in WordNet, adjective satellites counted as adjectives."""
    counts: dict[str, int] = {}
    for synset in _wordnet().synsets(word):
        pos = ADJECTIVE if synset.pos() == "s" else synset.pos()
        counts[pos] = counts.get(pos, 0) + 1
    return counts


def known(word: str) -> bool:
    """Whether WordNet has ``word`` (lower case), in any part of speech and inflection."""
    return bool(parts_of_speech(word))


def guess_pos(words: list[str], index: int) -> str | None:
    """The part of speech of ``words[index]`` in its context (``n``, ``v``, ``a``, ``r``), or ``None`` when
    WordNet does not know the word."""
    word = words[index].lower()
    senses = parts_of_speech(word)
    if not senses:
        return None
    previous = words[index - 1].lower() if index > 0 else ""
    following = words[index + 1].lower() if index + 1 < len(words) else ""
    if word.endswith("ly") and ADVERB in senses:
        return ADVERB
    if previous in _VERB_CUES and VERB in senses:
        return VERB
    if previous in _DETERMINERS:
        if ADJECTIVE in senses and NOUN in parts_of_speech(following):
            return ADJECTIVE
        if NOUN in senses:
            return NOUN
    if (previous in _ADJECTIVE_CUES or previous.endswith("ly")) and ADJECTIVE in senses:
        return ADJECTIVE
    if word.endswith(("ing", "ed")) and VERB in senses:
        return VERB
    return max(_ORDER, key=lambda pos: (senses.get(pos, 0), -_ORDER.index(pos)))


def _lemma_and_suffix(word: str, pos: str) -> tuple[str, str] | None:
    """The WordNet lemma of ``word`` and the canonical regular suffix that inflects it (``s``, ``ed``, ``ing`` or
    none), or ``None`` for a form this cannot rebuild on another lemma."""
    lemma = _wordnet().morphy(word, pos) or word
    if lemma == word:
        return lemma, ""
    for suffix in _SUFFIXES:
        if _inflect(lemma, suffix) == word or (suffix == "s" and word == lemma + "s"):
            return lemma, suffix
    return None


def _inflect(lemma: str, suffix: str) -> str | None:
    """``lemma`` with the regular ``suffix`` (English spelling rules for -s, -ed, -ing); ``None`` where the last
    consonant might double."""
    consonant_y = lemma.endswith("y") and len(lemma) > 1 and lemma[-2] not in "aeiou"
    if suffix == "s":
        if lemma.endswith(("s", "x", "z", "ch", "sh")):
            return lemma + "es"
        return lemma[:-1] + "ies" if consonant_y else lemma + "s"
    if suffix in ("ed", "ing") and _DOUBLING.search(lemma):
        return None
    if suffix == "ed":
        if lemma.endswith("e"):
            return lemma + "d"
        return lemma[:-1] + "ied" if consonant_y else lemma + "ed"
    if suffix == "ing":
        return lemma[:-1] + "ing" if lemma.endswith("e") and not lemma.endswith("ee") else lemma + "ing"
    return lemma


@functools.lru_cache(maxsize=200_000)
def synonyms(word: str, pos: str, multiword: bool = True) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (lower case) as part of speech ``pos``, from its first :data:`SENSES` senses,
    inflected like ``word``; most frequent sense first. Multi-word synonyms ("motion picture") only when
    ``multiword``, and never inflected."""
    found = _lemma_and_suffix(word, pos)
    if found is None:
        return ()
    lemma, suffix = found
    result: list[str] = []
    for synset in _wordnet().synsets(lemma, pos)[:SENSES]:
        for name in synset.lemma_names():
            candidate = name.replace("_", " ").lower()
            if " " in candidate or "-" in candidate:
                if not multiword or suffix:
                    continue
            else:
                candidate = _inflect(candidate, suffix)
            if candidate and candidate not in (word, lemma) and candidate not in result and candidate.isascii():
                result.append(candidate)
    return tuple(result)


@functools.lru_cache(maxsize=100_000)
def related(word: str, pos: str, relation: str) -> tuple[str, ...]:
    """Single-word lemmas related to the first sense of ``word`` in the WordNet graph: its ``hypernym`` (the
    broader term: "film" -> "movie" -> "show") or its ``co_hyponym`` (a sibling under the same hypernym:
    "comedy" -> "tragedy"), inflected like ``word``."""
    found = _lemma_and_suffix(word, pos)
    senses = _wordnet().synsets(found[0], pos) if found else []
    if not senses:
        return ()
    lemma, suffix = found
    sense = senses[0]
    parents = sense.hypernyms() + sense.instance_hypernyms()
    if relation == "hypernym":
        targets = parents
    else:
        targets = [sibling for parent in parents for sibling in parent.hyponyms() if sibling != sense]
    result: list[str] = []
    for synset in targets:
        for name in synset.lemma_names():
            candidate = name.lower()
            if "_" in candidate or "-" in candidate or not candidate.isascii():
                continue
            candidate = _inflect(candidate, suffix)
            if candidate and candidate not in (word, lemma) and candidate not in result:
                result.append(candidate)
    return tuple(result)


@functools.lru_cache(maxsize=100_000)
def antonyms(word: str) -> frozenset[str]:
    """Single-word WordNet antonyms of ``word`` (lower case) in any part of speech and sense (what an embedding
    neighbour must not be: "good" and "bad" sit close in a language model's embedding space)."""
    found = set()
    for synset in _wordnet().synsets(word):
        for lemma in synset.lemmas():
            found.update(a.name().lower() for a in lemma.antonyms() if "_" not in a.name())
    return frozenset(found)
