"""Built-in knowledge-graph retrievers (family ``kg``): text injection and entity-embedding fusion.

``kg=wordnet_text``
    K-BERT-style injection: each input (train, validation, test) gets its linked entities' best facts written
    in, under a token budget (:mod:`tessera.graphs.injection`). The model is unchanged, so the export is a plain
    Hugging Face directory; serving must inject the same way (the export's ``kg_injection.json`` records how,
    :func:`injector_from_export` rebuilds the injector).
``kg=wordnet_fusion``
    ERNIE-style fusion: KG entity embeddings (TransE by default, trained once per graph and cached) projected and
    added to the input embeddings on linked tokens (:mod:`tessera.graphs.fusion`). The export holds the plain
    encoder plus ``entity_fusion/``; transformers alone loads it *without* the fusion (the model card says so).

Both take any graph source through ``graph`` (default ``wordnet``): ``kg.wordnet_text.graph=commonsense``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.techniques import KGRetriever, TechniqueConfig

INJECTION_FILE = "kg_injection.json"
#: Facts ranked per entity before its own best ones are kept.
_RANKED_FACTS = 1000


@dataclass
class LinkingConfig(TechniqueConfig):
    """The graph and how text is linked to it."""

    #: A graph source: wordnet, commonsense, go, pykeen:nations, rdf:/path/file.ttl (see `tessera kg info`).
    graph: str = "wordnet"
    #: ``prior`` (most frequent sense) or ``degree`` (best-connected entity) when an alias is ambiguous.
    disambiguation: str = "prior"
    #: Link inflected forms through WordNet's morphy (dogs -> dog, running -> run).
    lemmatize: bool = True


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


@dataclass
class FusionConfig(LinkingConfig):
    """ERNIE-style entity-embedding fusion."""

    #: An embeddings file from ``tessera kg embed --out FILE``; null trains (once, cached) with the settings below.
    embeddings: Optional[str] = None
    kge_model: str = "transe"
    dim: int = 64
    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 0.01


def _check_graph(technique: KGRetriever) -> None:
    """Resolve the graph source and check the linking settings, without loading the graph."""
    from tessera.graphs.linking import DISAMBIGUATION
    from tessera.graphs.loaders import resolve
    from tessera.graphs.store import GraphError

    config = technique.config
    if config.disambiguation not in DISAMBIGUATION:
        raise ConfigError(f"{technique.label}: disambiguation={config.disambiguation} is not one of "
                          f"{', '.join(DISAMBIGUATION)}")
    try:
        resolve(config.graph).fingerprint()
    except GraphError as error:
        raise ConfigError(f"{technique.label}: {error}") from None


def _linker(config: LinkingConfig):
    from tessera.graphs.linking import EntityLinker
    from tessera.graphs.loaders import load_graph

    return EntityLinker(load_graph(config.graph), disambiguation=config.disambiguation, lemmatize=config.lemmatize)


def _kge_config(config):
    from tessera.graphs.embeddings import KGEConfig

    fusion = config if isinstance(config, FusionConfig) else FusionConfig()
    return KGEConfig(model=fusion.kge_model, dim=fusion.dim, epochs=fusion.epochs, batch_size=fusion.batch_size,
                     learning_rate=fusion.learning_rate)


def build_injector(config: TextInjectionConfig, tokenizer=None, max_length: int | None = None):
    """The :class:`~tessera.graphs.injection.TextInjector` ``config`` describes; token counts from ``tokenizer``
    when given (else words)."""
    from tessera.graphs.embeddings import cached_embeddings
    from tessera.graphs.injection import TextInjector, whitespace_tokens
    from tessera.graphs.retrieval import Retriever

    linker = _linker(config)
    embeddings = None
    if config.ranking == "embedding":
        embeddings = cached_embeddings(config.graph, _kge_config(config)).entities
    retriever = Retriever(linker.graph, hops=config.hops, relations=list(config.relations),
                          max_facts=_RANKED_FACTS, ranking=config.ranking, embeddings=embeddings, linker=linker,
                          direction=config.direction)
    count = whitespace_tokens
    special = 2
    if tokenizer is not None:
        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return TextInjector(retriever, config.facts_per_entity, config.max_fact_tokens, config.position, count,
                        max_length, special)


def injector_from_export(export_dir: Path):
    """The text injector a run with ``kg=wordnet_text`` trained with, from its export (for serving)."""
    from transformers import AutoTokenizer

    settings = json.loads((Path(export_dir) / INJECTION_FILE).read_text(encoding="utf-8"))
    return build_injector(TextInjectionConfig(**settings["config"]), AutoTokenizer.from_pretrained(export_dir),
                          settings["max_length"])


def _append_to_card(export_dir: Path, section: str) -> None:
    from tessera.core.files import write_text

    card = Path(export_dir) / "README.md"
    write_text(card, (card.read_text(encoding="utf-8") if card.is_file() else "") + "\n" + section)


class WordNetText(KGRetriever):
    """K-BERT-style injection of retrieved facts into the text of every example."""

    name = "wordnet_text"
    Config = TextInjectionConfig

    def validate(self, composition):
        from tessera.graphs.injection import POSITIONS
        from tessera.graphs.retrieval import DIRECTIONS, RANKINGS

        _check_graph(self)
        for key, value, valid in (("position", self.config.position, POSITIONS),
                                  ("ranking", self.config.ranking, RANKINGS),
                                  ("direction", self.config.direction, DIRECTIONS)):
            if value not in valid:
                raise ConfigError(f"{self.label}: {key}={value} is not one of {', '.join(valid)}")
        if self.config.hops < 1 or self.config.facts_per_entity < 1 or self.config.max_fact_tokens < 0:
            raise ConfigError(f"{self.label}: hops and facts_per_entity must be at least 1, max_fact_tokens >= 0")

    def injector(self, run=None):
        """The injector of this technique, built once (with the run's tokenizer and max length when given)."""
        if getattr(self, "_injector", None) is None:
            tokenizer = max_length = None
            if run is not None:
                from tessera.core.models import load_tokenizer

                tokenizer, max_length = load_tokenizer(run.cfg.model), run.cfg.data.max_length
            self._injector = build_injector(self.config, tokenizer, max_length)
        return self._injector

    def enrich(self, examples: list[dict], run=None) -> list[dict]:
        """The examples with their facts written into ``text`` (other keys kept); ``run`` may be None."""
        injector = self.injector(run)
        return [{**example, "text": injector.inject(example["text"])} for example in examples]

    @hookimpl
    def tessera_export(self, run, export_dir):
        from tessera.core.files import write_json

        write_json(Path(export_dir) / INJECTION_FILE,
                   {"technique": self.name, "config": asdict(self.config), "max_length": run.cfg.data.max_length})
        _append_to_card(export_dir, "\n".join([
            "## Knowledge injection (kg=wordnet_text)",
            "",
            f"This model was trained and evaluated on inputs with facts from the `{self.config.graph}` graph written",
            f"into them (K-BERT style, {self.config.position}). Give it inputs enriched the same way:",
            "",
            "```python",
            "from tessera.plugins.retrievers import injector_from_export",
            'text = injector_from_export("export").inject("a gorgeous, witty film")',
            "```",
            "",
        ]))


class WordNetFusion(KGRetriever):
    """ERNIE-style fusion of KG entity embeddings into the encoder's input embeddings on linked spans."""

    name = "wordnet_fusion"
    Config = FusionConfig

    def validate(self, composition):
        from tessera.graphs.embeddings import MODELS

        _check_graph(self)
        if self.config.embeddings is None and self.config.kge_model not in MODELS:
            raise ConfigError(f"{self.label}: kge_model={self.config.kge_model} is not one of {', '.join(MODELS)}")
        if self.config.embeddings is not None and not Path(self.config.embeddings).expanduser().is_file():
            raise ConfigError(f"{self.label}: embeddings={self.config.embeddings} does not exist: write it with "
                              f"`tessera kg embed {self.config.graph} --out FILE` or leave it null")

    def enrich(self, examples: list[dict], run=None) -> list[dict]:
        """Fusion leaves the text alone: the knowledge enters through the embeddings."""
        return examples

    def entity_vectors(self):
        """The entity embedding matrix: from ``embeddings`` or trained (once per graph and settings, cached)."""
        from tessera.graphs.embeddings import TrainedEmbeddings, cached_embeddings
        from tessera.graphs.loaders import load_graph

        if self.config.embeddings is not None:
            trained = TrainedEmbeddings.load(Path(self.config.embeddings).expanduser())
            graph = load_graph(self.config.graph)
            if len(trained.entities) != graph.num_entities:
                raise ConfigError(f"{self.label}: {self.config.embeddings} has {len(trained.entities)} entities, "
                                  f"graph {self.config.graph} has {graph.num_entities}: embed that graph")
            return trained.entities
        return cached_embeddings(self.config.graph, _kge_config(self.config)).entities

    def attach(self, model, run):
        from tessera.core.models import load_tokenizer
        from tessera.graphs.fusion import attach_fusion, fusion_of

        self.linker = _linker(self.config)
        model = attach_fusion(model, load_tokenizer(run.cfg.model), self.linker, self.entity_vectors())
        self.fusion = fusion_of(model)
        return model

    @hookimpl
    def tessera_export(self, run, export_dir):
        from tessera.graphs.fusion import FUSION_DIR, save_fusion

        save_fusion(self.fusion, export_dir, self.config.graph, self.linker)
        _append_to_card(export_dir, "\n".join([
            "## Entity-embedding fusion (kg=wordnet_fusion): read this before loading",
            "",
            "The test metrics above were measured WITH entity-embedding fusion: KG entity embeddings from the",
            f"`{self.config.graph}` graph, projected and added to the input embeddings of linked tokens at run time.",
            "That cannot be expressed as a plain transformers model or folded into its weights, so this directory's",
            "`model.safetensors` is the encoder WITHOUT the fusion: `from_pretrained` loads it anywhere, but its",
            f"predictions differ from the evaluated model. The fusion is in `{FUSION_DIR}/`; load the fused model",
            "with:",
            "",
            "```python",
            "from tessera.graphs.fusion import load_fused",
            'model, tokenizer = load_fused("export")',
            "```",
            "",
            "vLLM serves only the plain encoder (no fusion).",
            "",
        ]))


@hookimpl
def tessera_kg_retrievers():
    return [WordNetText, WordNetFusion]
