"""``kg=entity_fusion``: ERNIE-style fusion of KG entity embeddings into the encoder's input embeddings.

KG entity embeddings (TransE by default, trained once per graph and cached) are projected and added to the input
embeddings on linked tokens (:mod:`tessera.graphs.fusion`). The export holds the plain encoder plus
``entity_fusion/``; transformers alone loads it *without* the fusion (the model card says so). Any graph source
through ``graph`` (default ``wordnet``): ``kg.entity_fusion.graph=commonsense``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.techniques import KGRetriever
from tessera.plugins.retrievers.base import LinkingConfig, append_to_card, check_graph, entity_linker


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


def kge_config(config):
    """The KGE training settings of ``config``: its own for a :class:`FusionConfig`, the defaults for any other
    (text injection ranking facts by embedding similarity)."""
    from tessera.graphs.embeddings import KGEConfig

    fusion = config if isinstance(config, FusionConfig) else FusionConfig()
    return KGEConfig(
        model=fusion.kge_model,
        dim=fusion.dim,
        epochs=fusion.epochs,
        batch_size=fusion.batch_size,
        learning_rate=fusion.learning_rate,
    )


class EntityFusion(KGRetriever):
    """ERNIE-style fusion of KG entity embeddings into the encoder's input embeddings on linked spans."""

    name = "entity_fusion"
    Config = FusionConfig

    def validate(self, composition):
        from tessera.graphs.embeddings import MODELS

        check_graph(self, composition.plugins)
        if self.config.embeddings is None and self.config.kge_model not in MODELS:
            raise ConfigError(f"{self.label}: kge_model={self.config.kge_model} is not one of {', '.join(MODELS)}")
        if self.config.embeddings is not None and not Path(self.config.embeddings).expanduser().is_file():
            raise ConfigError(
                f"{self.label}: embeddings={self.config.embeddings} does not exist: write it with "
                f"`tessera kg embed {self.config.graph} --out FILE` or leave it null"
            )

    def enrich(self, examples: list[dict], run) -> list[dict]:
        """Fusion leaves the text alone: the knowledge enters through the embeddings."""
        return examples

    def entity_vectors(self, plugins):
        """The entity embedding matrix: from ``embeddings`` or trained (once per graph and settings, cached), over
        the graph from the loaders of ``plugins``."""
        from tessera.graphs.embeddings import TrainedEmbeddings, cached_embeddings
        from tessera.graphs.loaders import load_graph

        if self.config.embeddings is not None:
            trained = TrainedEmbeddings.load(Path(self.config.embeddings).expanduser())
            graph = load_graph(self.config.graph, plugins)
            if len(trained.entities) != graph.num_entities:
                raise ConfigError(
                    f"{self.label}: {self.config.embeddings} has {len(trained.entities)} entities, "
                    f"graph {self.config.graph} has {graph.num_entities}: embed that graph"
                )
            return trained.entities
        return cached_embeddings(self.config.graph, kge_config(self.config), plugins).entities

    def attach(self, model, run):
        from tessera.core.models import load_tokenizer
        from tessera.graphs.fusion import attach_fusion, fusion_of

        plugins = run.composition.plugins
        self.linker = entity_linker(self.config, plugins)
        model = attach_fusion(model, load_tokenizer(run.cfg.model), self.linker, self.entity_vectors(plugins))
        self.fusion = fusion_of(model)
        return model

    @hookimpl
    def tessera_export(self, run, export_dir):
        from tessera.graphs.fusion import FUSION_DIR, save_fusion

        save_fusion(self.fusion, export_dir, self.config.graph, self.linker)
        append_to_card(
            export_dir,
            "\n".join(
                [
                    "## Entity-embedding fusion (kg=entity_fusion): read this before loading",
                    "",
                    "The test metrics above were measured WITH entity-embedding fusion: KG entity embeddings from the",
                    f"`{self.config.graph}` graph, projected and added to the input embeddings of linked tokens at run time.",
                    "That cannot be expressed as a plain transformers model or folded into its weights, so this directory's",
                    "`model.safetensors` is the encoder WITHOUT the fusion: `from_pretrained` loads it anywhere, but its",
                    f"predictions differ from the evaluated model. The fusion is in `{FUSION_DIR}/`; load the fused model",
                    "with:",
                    "",
                    "```python",
                    "from tessera.core.plugins import discover",
                    "from tessera.graphs.fusion import load_fused",
                    'model, tokenizer = load_fused("export", discover())',
                    "```",
                    "",
                    "vLLM serves only the plain encoder (no fusion).",
                    "",
                ]
            ),
        )
