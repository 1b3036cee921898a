"""``kg=text_injection``: K-BERT-style injection of retrieved facts into the text.

Each input (train, validation, test) gets its linked entities' best facts written in, under a token budget
(:mod:`tessera.graphs.injection`). The model is unchanged, so the export is a plain Hugging Face directory; serving
must inject the same way (the export's ``kg_injection.json`` records how, :func:`injector_from_export` rebuilds the
injector). Any graph source through ``graph`` (default ``wordnet``): ``kg.text_injection.graph=commonsense``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.techniques import KGRetriever
from tessera.plugins.retrievers.base import LinkingConfig, append_to_card, check_graph, entity_linker
from tessera.plugins.retrievers.entity_fusion import kge_config

INJECTION_FILE = "kg_injection.json"
#: Facts ranked per entity before its own best ones are kept.
_RANKED_FACTS = 1000


@dataclass
class TextInjectionConfig(LinkingConfig):
    """K-BERT-style text injection."""

    #: ``out``: the entity's own statements (dog is a kind of canine), as K-BERT; ``in``: statements about it
    #: (puppy is a kind of dog); ``both``.
    direction: str = "out"
    #: Hops of the neighbourhood that ranks each entity's facts (the injected facts are the entity's own).
    hops: int = 1
    #: Only facts of these relations (empty: all relations of the graph).
    relations: list[str] = field(default_factory=list)
    facts_per_entity: int = 1
    #: Most tokens of facts added to one input (also capped so the input stays within data.max_length).
    max_fact_tokens: int = 24
    #: ``inline`` (after each mention, as K-BERT) or ``append`` (after the text).
    position: str = "inline"
    #: ``pagerank`` (personalized PageRank) or ``embedding`` (similarity of KGE embeddings, trained and cached).
    ranking: str = "pagerank"


def build_injector(config: TextInjectionConfig, plugins, tokenizer=None, max_length: int | None = None):
    """The :class:`~tessera.graphs.injection.TextInjector` ``config`` describes, over a graph from the loaders of
    ``plugins``; token counts from ``tokenizer`` when given (else words)."""
    from tessera.graphs.embeddings import cached_embeddings
    from tessera.graphs.injection import TextInjector, whitespace_tokens
    from tessera.graphs.retrieval import Retriever

    linker = entity_linker(config, plugins)
    embeddings = None
    if config.ranking == "embedding":
        embeddings = cached_embeddings(config.graph, kge_config(config), plugins).entities
    retriever = Retriever(
        linker.graph,
        hops=config.hops,
        relations=list(config.relations),
        max_facts=_RANKED_FACTS,
        ranking=config.ranking,
        embeddings=embeddings,
        linker=linker,
        direction=config.direction,
    )
    count = whitespace_tokens
    special = 2
    if tokenizer is not None:

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return TextInjector(
        retriever, config.facts_per_entity, config.max_fact_tokens, config.position, count, max_length, special
    )


def injector_from_export(export_dir: Path, plugins):
    """The text injector a run with ``kg=text_injection`` trained with, from its export (for serving), with the
    graph loaders of ``plugins`` (:func:`tessera.core.plugins.discover`)."""
    from transformers import AutoTokenizer

    settings = json.loads((Path(export_dir) / INJECTION_FILE).read_text(encoding="utf-8"))
    return build_injector(
        TextInjectionConfig(**settings["config"]),
        plugins,
        AutoTokenizer.from_pretrained(export_dir),
        settings["max_length"],
    )


class TextInjection(KGRetriever):
    """K-BERT-style injection of retrieved facts into the text of every example."""

    name = "text_injection"
    Config = TextInjectionConfig

    def validate(self, composition):
        from tessera.graphs.injection import POSITIONS
        from tessera.graphs.retrieval import DIRECTIONS, RANKINGS

        check_graph(self, composition.plugins)
        for key, value, valid in (
            ("position", self.config.position, POSITIONS),
            ("ranking", self.config.ranking, RANKINGS),
            ("direction", self.config.direction, DIRECTIONS),
        ):
            if value not in valid:
                raise ConfigError(f"{self.label}: {key}={value} is not one of {', '.join(valid)}")
        if self.config.hops < 1 or self.config.facts_per_entity < 1 or self.config.max_fact_tokens < 0:
            raise ConfigError(f"{self.label}: hops and facts_per_entity must be at least 1, max_fact_tokens >= 0")

    def injector(self, run):
        """The injector of this technique, built once, with the run's graph loaders, tokenizer and max length."""
        if getattr(self, "_injector", None) is None:
            from tessera.core.models import load_tokenizer

            self._injector = build_injector(
                self.config, run.composition.plugins, load_tokenizer(run.cfg.model), run.cfg.data.max_length
            )
        return self._injector

    def enrich(self, examples: list[dict], run) -> list[dict]:
        """The examples with their facts written into ``text`` (other keys kept)."""
        injector = self.injector(run)
        return [{**example, "text": injector.inject(example["text"])} for example in examples]

    @hookimpl
    def tessera_export(self, run, export_dir):
        from tessera.core.files import write_json

        write_json(
            Path(export_dir) / INJECTION_FILE,
            {"technique": self.name, "config": asdict(self.config), "max_length": run.cfg.data.max_length},
        )
        append_to_card(
            export_dir,
            "\n".join(
                [
                    "## Knowledge injection (kg=text_injection)",
                    "",
                    f"This model was trained and evaluated on inputs with facts from the `{self.config.graph}` graph written",
                    f"into them (K-BERT style, {self.config.position}). Give it inputs enriched the same way:",
                    "",
                    "```python",
                    "from tessera.core.plugins import discover",
                    "from tessera.plugins.retrievers.text_injection import injector_from_export",
                    'text = injector_from_export("export", discover()).inject("a gorgeous, witty film")',
                    "```",
                    "",
                ]
            ),
        )
