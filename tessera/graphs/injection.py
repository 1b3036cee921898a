"""K-BERT-style text injection: retrieved facts written into each input, under a token budget.

For every entity linked in a text (in order of mention) the :class:`TextInjector` retrieves its best facts
(``facts_per_entity`` of the facts it takes part in, through a :class:`~tessera.graphs.retrieval.Retriever`) and
verbalizes them. Facts are
taken round-robin over the mentions (each entity's best fact first) until the budget is spent: at most
``max_fact_tokens`` tokens of facts, and no more than leaves the whole input within ``max_length`` tokens when a
tokenizer is given, so injection never pushes the original words out of the truncation window. With
``position="inline"`` (K-BERT) each mention is followed by its facts in parentheses; with ``"append"`` the facts
follow the text. Facts whose two ends read the same ("run is related in form to run") are skipped.

The same injector serves training, evaluation and serving: :meth:`TextInjector.inject` maps one text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tessera.graphs.retrieval import Retriever
from tessera.graphs.store import GraphError

POSITIONS = ("inline", "append")


def whitespace_tokens(text: str) -> int:
    """A token count when no tokenizer is given: whitespace-separated words."""
    return len(text.split())


@dataclass
class TextInjector:
    """Writes an input's retrieved facts into it (see the module docstring)."""

    retriever: Retriever
    facts_per_entity: int = 1
    max_fact_tokens: int = 24
    position: str = "inline"
    #: Counts the tokens of a string (the model tokenizer's, without special tokens).
    count_tokens: Callable[[str], int] = whitespace_tokens
    #: The model's maximum input length in tokens, special tokens included (None: no limit but the budget).
    max_length: int | None = None
    #: Tokens the tokenizer adds around an input ([CLS] and [SEP] for BERT).
    special_tokens: int = 2

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise GraphError(f"position {self.position!r} is not one of {', '.join(POSITIONS)}")
        self._facts: dict[int, list[tuple[str, int]]] = {}

    def entity_facts(self, entity: int) -> list[tuple[str, int]]:
        """The verbalized best facts that one entity takes part in, ranked by the retriever (whose ``direction``
        decides: ``out`` keeps the entity's own statements, ``dog is a kind of canine``, as K-BERT does). Cached:
        the same entity recurs across inputs. Each fact comes with its token count."""
        if entity not in self._facts:
            found = self.retriever.retrieve_ids([entity])
            graph = self.retriever.graph
            sentences = [
                sentence
                for (h, _, t), sentence in zip(graph.triples[found.edges], found.sentences())
                if entity in (h, t) and graph.labels[h].casefold() != graph.labels[t].casefold()
            ]
            self._facts[entity] = [(s, self.count_tokens(s)) for s in sentences[: self.facts_per_entity]]
        return self._facts[entity]

    def budget(self, text: str) -> int:
        """Tokens of facts ``text`` can take."""
        budget = self.max_fact_tokens
        if self.max_length is not None:
            budget = min(budget, self.max_length - self.special_tokens - self.count_tokens(text))
        return max(budget, 0)

    def select(self, text: str) -> list[tuple[int, str]]:
        """``(character offset after the mention, fact)`` pairs chosen for ``text`` under its budget."""
        mentions = self.retriever.linker.link(text)
        seen, per_mention = set(), []
        for mention in mentions:
            if mention.entity not in seen:
                seen.add(mention.entity)
                per_mention.append((mention.end, self.entity_facts(mention.entity)))
        budget, chosen = self.budget(text), []
        for rank in range(self.facts_per_entity):
            for end, facts in per_mention:
                if rank < len(facts):
                    fact, tokens = facts[rank]
                    cost = tokens + 2  # the separator and bracket tokens
                    if cost <= budget:
                        budget -= cost
                        chosen.append((end, fact))
        return chosen

    def inject(self, text: str) -> str:
        """``text`` with its chosen facts written in; unchanged when nothing is linked or the budget is spent."""
        chosen = self.select(text)
        if not chosen:
            return text
        if self.position == "append":
            return f"{text} ({'; '.join(fact for _, fact in chosen)})"
        by_end: dict[int, list[str]] = {}
        for end, fact in chosen:
            by_end.setdefault(end, []).append(fact)
        pieces, cursor = [], 0
        for end in sorted(by_end):
            pieces += [text[cursor:end], f" ({'; '.join(by_end[end])})"]
            cursor = end
        return "".join([*pieces, text[cursor:]])
