"""Entity linking: find the graph's entities in text by their aliases.

The :class:`EntityLinker` folds case, tokenizes (words with inner apostrophes and hyphens), and scans the tokens
left to right taking the **longest** span that matches an alias at each position, as written or lemmatized with
WordNet's morphy (``dogs`` -> ``dog``, ``running`` -> ``run``, ``hot dogs`` -> ``hot dog``). The candidates of all
spellings of that span compete: the linker picks by ``prior`` (the alias's prior, e.g. WordNet's sense frequency)
or by ``degree`` (the entity with the most facts); ties go to the other criterion, then to the lower id. Single
stop words ("the", "is", "a") are never linked.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from tessera.graphs.store import GraphError, KnowledgeGraph

TOKEN = re.compile(r"\w+(?:['’-]\w+)*")
DISAMBIGUATION = ("prior", "degree")
#: Function words that are never linked on their own (they are WordNet lemmas: "a" is vitamin A, "is" is be).
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves s t""".split()
)


@dataclass(frozen=True)
class Mention:
    """A linked span: ``text[start:end]`` names ``entity`` (id) with key ``key``; ``candidates`` are every entity
    the alias could name, best first."""

    start: int
    end: int
    text: str
    entity: int
    key: str
    candidates: tuple[int, ...] = field(default=(), compare=False)


def _fold(text: str) -> str:
    return text.casefold().replace("’", "'")


def tokenize(text: str) -> list[re.Match]:
    """The word tokens of ``text`` as regex matches (``.group()``, ``.start()``, ``.end()``)."""
    return list(TOKEN.finditer(text))


def alias_key(text: str) -> str:
    """The normalised form under which an alias is indexed: case-folded tokens joined by single spaces."""
    return " ".join(match.group() for match in TOKEN.finditer(_fold(text)))


class EntityLinker:
    """Links text to the entities of ``graph`` through an alias index built once (see the module docstring)."""

    def __init__(
        self,
        graph: KnowledgeGraph,
        *,
        lemmatize: bool = True,
        disambiguation: str = "prior",
        stopwords: frozenset[str] = STOPWORDS,
        min_length: int = 2,
    ):
        if disambiguation not in DISAMBIGUATION:
            raise GraphError(f"disambiguation {disambiguation!r} is not one of {', '.join(DISAMBIGUATION)}")
        self.graph = graph
        self.lemmatize = lemmatize
        self.disambiguation = disambiguation
        self.stopwords = stopwords
        self.min_length = min_length
        self._lemmas: dict[str, tuple[str, ...]] = {}
        self.index = self._build_index()
        #: The most tokens of an alias starting with each first word: bounds the longest match tried.
        self.max_tokens: dict[str, int] = {}
        for key in self.index:
            first, *rest = key.split(" ")
            self.max_tokens[first] = max(self.max_tokens.get(first, 0), len(rest) + 1)

    def _build_index(self) -> dict[str, tuple[tuple[int, float], ...]]:
        """``{alias key: ((entity id, prior), ...) best first}``."""
        graph = self.graph
        best_prior: dict[str, dict[int, float]] = {}
        for name, entity, prior in zip(graph.alias_names, graph.alias_entities.tolist(), graph.alias_priors.tolist()):
            key = alias_key(name)
            if key:
                candidates = best_prior.setdefault(key, {})
                candidates[entity] = max(prior, candidates.get(entity, 0.0))
        return {key: self._ranked(c.items()) for key, c in best_prior.items()}

    def _ranked(self, candidates) -> tuple[tuple[int, float], ...]:
        """``(entity, prior)`` pairs best first, by the disambiguation criterion, then the other, then id."""
        degree = self.graph.degree
        if self.disambiguation == "prior":

            def rank(item):
                return (-item[1], -degree[item[0]], item[0])
        else:

            def rank(item):
                return (-degree[item[0]], -item[1], item[0])

        return tuple(sorted(candidates, key=rank))

    @functools.cached_property
    def _morphy(self):
        from tessera.graphs.wordnet import wordnet

        return wordnet().morphy

    def lemmas(self, token: str) -> tuple[str, ...]:
        """The WordNet base forms of ``token`` other than itself (any part of speech); none without lemmatization.
        Memoised per linker."""
        if not self.lemmatize:
            return ()
        forms = self._lemmas.get(token)
        if forms is None:
            found = []
            for pos in ("n", "v", "a", "r"):
                form = self._morphy(token, pos)
                if form and form != token and form not in found:
                    found.append(form)
            forms = self._lemmas[token] = tuple(found)
        return forms

    def _spellings(self, words: list[str]) -> list[str]:
        """Alias keys to try for a span of folded ``words``: as written, then with lemmatized words."""
        keys = [" ".join(words)]
        for form in self.lemmas(words[-1]):
            keys.append(" ".join([*words[:-1], form]))
        if len(words) > 1:
            for form in self.lemmas(words[0]):
                keys.append(" ".join([form, *words[1:]]))
        return keys

    def link(self, text: str) -> list[Mention]:
        """The entity mentions of ``text``, left to right, longest alias first; none when nothing matches."""
        tokens = tokenize(text)
        words = [_fold(t.group()) for t in tokens]
        mentions, position = [], 0
        while position < len(tokens):
            found = None
            first = words[position]
            longest = max(self.max_tokens.get(form, 0) for form in (first, *self.lemmas(first)))
            for length in range(min(longest, len(tokens) - position), 0, -1):
                span = words[position : position + length]
                if length == 1 and (span[0] in self.stopwords or len(span[0]) < self.min_length):
                    break
                merged: dict[int, float] = {}
                for key in self._spellings(span):
                    for entity, prior in self.index.get(key, ()):
                        merged[entity] = max(prior, merged.get(entity, 0.0))
                if merged:  # every spelling's candidates compete: "chased" -> chase.v.01, not the noun "chased"
                    found = (length, self._ranked(merged.items()) if len(merged) > 1 else tuple(merged.items()))
                    break
            if found is None:
                position += 1
                continue
            length, ranked = found
            start, end = tokens[position].start(), tokens[position + length - 1].end()
            candidates = tuple(entity for entity, _ in ranked)
            mentions.append(
                Mention(start, end, text[start:end], candidates[0], self.graph.entities[candidates[0]], candidates)
            )
            position += length
        return mentions

    def entities(self, text: str) -> np.ndarray:
        """The distinct entity ids linked in ``text``, in order of first mention."""
        return np.array(list(dict.fromkeys(m.entity for m in self.link(text))), dtype=np.int64)
