"""What the built-in ``kg`` retrievers share: the graph and linking settings, their checks, the entity linker and
the model-card section each adds to the export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tessera.core.errors import ConfigError
from tessera.core.techniques import KGRetriever, TechniqueConfig


@dataclass
class LinkingConfig(TechniqueConfig):
    """The graph and how text is linked to it."""

    #: A graph source: wordnet, commonsense, go, pykeen:nations, rdf:/path/file.ttl (see `tessera kg info`).
    graph: str = "wordnet"
    #: ``prior`` (most frequent sense) or ``degree`` (best-connected entity) when an alias is ambiguous.
    disambiguation: str = "prior"
    #: Link inflected forms through WordNet's morphy (dogs -> dog, running -> run).
    lemmatize: bool = True


def check_graph(technique: KGRetriever, plugins) -> None:
    """Resolve the graph source with the loaders of ``plugins`` and check the linking settings, without loading
    the graph."""
    from tessera.graphs.linking import DISAMBIGUATION
    from tessera.graphs.loaders import resolve
    from tessera.graphs.store import GraphError

    config = technique.config
    if config.disambiguation not in DISAMBIGUATION:
        raise ConfigError(
            f"{technique.label}: disambiguation={config.disambiguation} is not one of {', '.join(DISAMBIGUATION)}"
        )
    try:
        resolve(config.graph, plugins).fingerprint()
    except GraphError as error:
        raise ConfigError(f"{technique.label}: {error}") from None


def entity_linker(config: LinkingConfig, plugins):
    """The entity linker over the graph ``config`` names (a loader of ``plugins``), with its disambiguation and
    lemmatisation."""
    from tessera.graphs.linking import EntityLinker
    from tessera.graphs.loaders import load_graph

    return EntityLinker(
        load_graph(config.graph, plugins), disambiguation=config.disambiguation, lemmatize=config.lemmatize
    )


def append_to_card(export_dir: Path, section: str) -> None:
    """Append ``section`` (Markdown) to the export's model card."""
    from tessera.core.files import write_text

    card = Path(export_dir) / "README.md"
    write_text(card, (card.read_text(encoding="utf-8") if card.is_file() else "") + "\n" + section)
