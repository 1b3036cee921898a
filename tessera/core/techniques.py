"""The technique families: one small base class per family, each the protocol the pipeline calls.

A technique is a class with a ``name``, a ``Config`` dataclass (its parameters, type-checked by Hydra) and the
methods of its family. The pipeline builds one instance per selected technique, ``cls(config)``, and calls them in
config order. ``validate`` runs before any heavy work and raises
:class:`~tessera.core.errors.IncompatibleError` for a combination that cannot work. An instance may also implement
lifecycle events (methods decorated with :data:`tessera.hookimpl`, e.g. ``tessera_step_end``): each selected
instance is registered with the run's plugin manager, so it hears the events of its own run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tessera.core.compression import Compressed, CompressionContext
    from tessera.core.ensembling import EnsembleContext
    from tessera.core.run import Composition, Run


@dataclass
class TechniqueConfig:
    """Parameters of a technique that takes none; technique configs subclass it."""


class Technique(ABC):
    """Base of every technique. Subclasses set ``family`` (through their family base), ``name`` and ``Config``."""

    family: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type] = TechniqueConfig
    #: Why this technique cannot run with ``trainer.processes`` > 1 (refused before any work), or None: it can.
    not_distributed: ClassVar[Optional[str]] = None

    def __init__(self, config: Any):
        self.config = config

    def validate(self, composition: Composition) -> None:
        """Raise ``IncompatibleError`` when this technique cannot run in ``composition``; called before any work."""

    @property
    def label(self) -> str:
        """``family=name``, as on the command line."""
        return f"{self.family}={self.name}"


@dataclass
class ObjectiveConfig(TechniqueConfig):
    """Parameters shared by all objectives: the weight of this loss in a combination."""

    weight: float = 1.0


class Objective(Technique):
    """Turns examples into training items and a model's outputs on a batch of them into a scalar loss.

    ``task`` names the model head it trains (``sequence-classification``, ``masked-lm``, ``next-sentence``,
    ``causal-lm``); the run loads the model class that has the heads of all its objectives. ``needs_labels`` says
    whether the data must be labelled. An objective that ``rides_along`` (MLM) adds its targets to batches built by
    another objective in the same run, by :meth:`transform`; otherwise the first objective in config order builds
    the items with :meth:`items`, and the others must accept them. ``metric`` names the test metric that ranks runs
    of this objective against each other (a sweep's best job), ``higher_is_better`` its direction.
    """

    family = "objective"
    task: ClassVar[str]
    needs_labels: ClassVar[bool] = False
    rides_along: ClassVar[bool] = False
    #: Whether it reads ``data.unlabelled`` (consistency training); a run that sets ``data.unlabelled`` without such
    #: an objective is refused, since nothing would read it.
    reads_unlabelled: ClassVar[bool] = False
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    Config = ObjectiveConfig

    @abstractmethod
    def items(self, examples: list[dict], tokenizer, max_length: int, seed: int) -> list[dict]:
        """Training items from examples: dicts of token-id lists (``input_ids``, optional ``token_type_ids``,
        token-level ``labels``) and scalar targets, padded later by :func:`tessera.core.batching.collate`."""

    def transform(self, batch: dict, tokenizer, generator) -> dict:
        """Change a collated batch before the forward pass (dynamic masking); ``generator`` is a seeded
        ``torch.Generator``. The default returns the batch as it is."""
        return batch

    @abstractmethod
    def loss(self, outputs, batch):
        """The loss tensor of ``batch`` given the model's ``outputs`` (one forward pass serves all objectives)."""

    def evaluate(self, run: Run, model, tokenizer, examples: list[dict], split: str) -> dict:
        """Task metrics beyond the mean loss on ``examples`` (e.g. accuracy); ``split`` is ``validation``,
        ``test``, or ``member`` (a member of an ensemble stage on the test split); write artifacts such as plots
        into ``run.dir`` only for ``test``. The default adds nothing."""
        return {}


class Adapter(Technique):
    """Transforms the model before training and undoes the transformation for export."""

    family = "adapter"
    #: Whether the adapter owns parameters: :func:`~tessera.core.adapting.apply_adapters` hands it the model with
    #: every parameter frozen, and the run trains the union of what the owners mark trainable. False for adapters
    #: that act on that union afterwards (the freezing adapters, ``llrd``).
    owns_parameters: bool = True

    @abstractmethod
    def apply(self, model, run: Run):
        """Return the model to train (it may wrap ``model``), with the parameters this adapter owns trainable."""

    def merge(self, model):
        """Return a plain model with this adapter folded in, for a self-contained export."""
        return model

    def save_unmerged(self, model, directory) -> bool:
        """Write the adapter alone to ``directory`` if it has an unmerged form; return whether it wrote one."""
        return False

    def export_note(self, model) -> str | None:
        """One line for the export's log and model card about this adapter (e.g. why vLLM cannot serve its unmerged
        form, so the merged model is the one to serve), or None. Called with the trained model before :meth:`merge`."""
        return None

    def learning_rate_scale(self, parameter_name: str) -> float:
        """The factor on ``trainer.learning_rate`` for a trainable parameter (layer-wise decay); 1.0 by default.
        The factors of all selected adapters multiply."""
        return 1.0


class Augmenter(Technique):
    """Maps training examples to training examples, deterministically from ``seed``."""

    family = "augment"

    @abstractmethod
    def augment(self, examples: list[dict], seed: int) -> list[dict]:
        """Return the augmented training examples (each a dict with ``text`` and ``label``)."""


class Adversary(Technique):
    """Owns the backward seam of a training step."""

    family = "adversary"

    @abstractmethod
    def backward(self, step, loss) -> None:
        """Back-propagate ``loss`` (and any adversarial losses) for ``step`` (a :class:`TrainStep`)."""


class Compressor(Technique):
    """Makes the trained model smaller or faster, at one or both of two places (:mod:`tessera.core.compression`).

    **Post-training** (:meth:`compress`): after training and the test evaluation, on the model with its adapters
    merged, with the tokenizer and a seeded calibration sample of the training split. The post-training
    compressors chain in config order, each receiving the model the one before returned; the final model is
    evaluated again on the test split and its export is written by the last format of the chain.

    **Training-time**: the trainer's seams. :meth:`prepare` changes the model before the adapters are applied (a
    student with fewer layers), :meth:`training_loss` changes the loss of each batch (distillation), and lifecycle
    events implemented on the instance act during training (masks at ``tessera_before_optimizer_step``).
    """

    family = "compress"
    #: Whether the model it returns cannot be compressed further (a quantized or ONNX model): a terminal
    #: compressor must come last in the chain.
    terminal: ClassVar[bool] = False

    def prepare(self, model, run: Run):
        """Return the model to train in place of ``model`` (before the adapters are applied). Default: unchanged."""
        return model

    def training_loss(self, loss, outputs, batch):
        """Return the loss of a training batch given the objectives' weighted ``loss`` and the model's ``outputs``
        (the loss seam, after the objectives). Default: ``loss`` unchanged."""
        return loss

    def compress(self, model, context: CompressionContext) -> Compressed | None:
        """Return the compressed model and its export format, or None when this technique acts only during
        training. ``model`` has the adapters merged; ``context`` has the run, the tokenizer and calibration
        items."""
        return None


@dataclass
class EnsembleConfig(TechniqueConfig):
    """The members of an ensemble and their weights; ensemblers' configs subclass it."""

    #: Earlier stages of the job, run directories or Hugging Face model directories; empty: every earlier stage.
    members: list[str] = field(default_factory=list)
    #: One weight per member (normalised to sum to 1); null: equal weights.
    weights: Optional[list[float]] = None


class Ensembler(Technique):
    """Combines the exports of several trained models (the members) in a stage of its own, which trains nothing
    (:mod:`tessera.core.ensembling`). Subclass one of the two kinds: :class:`WeightMerger` merges the members'
    parameters into one model, exported and served like a trained one; :class:`OutputCombiner` combines their
    predictions."""

    family = "ensemble"
    Config = EnsembleConfig
    #: ``weights`` (one merged model) or ``outputs`` (combined predictions), set by the two kinds.
    space: ClassVar[str]

    def validate(self, composition: Composition) -> None:
        """The members exist, complete, and can be combined; the stage selects nothing that trains. Subclasses
        that add checks call ``super().validate(composition)``."""
        from tessera.core.ensembling import validate_ensemble

        validate_ensemble(self, composition)


class WeightMerger(Ensembler):
    """An ensembler whose result is one model: the members' parameters merged."""

    space = "weights"

    @abstractmethod
    def merge(self, members: list[dict], base: dict | None, context: EnsembleContext) -> dict:
        """The merged state dict from the members' state dicts (float32 tensors of the same names and shapes, in
        member order); ``base`` is the state dict of the members' common base model, for task vectors
        (``member - base``; a tensor the base lacks, as a new head, is missing from it), or None."""

    def details(self) -> dict:
        """What the last :meth:`merge` chose, as JSON (greedy soup: the members it kept), written to
        ``metrics.json`` under ``ensemble.details``. Default: nothing."""
        return {}

    def write_unmerged(self, directory: Path) -> None:
        """Write what the last :meth:`merge` made besides the merged weights into the finished export ``directory``
        (peft_merge: the merged adapter, ``adapters/merged``); called when the stage compresses nothing, as
        adapters are exported unmerged only then. Default: nothing."""


class OutputCombiner(Ensembler):
    """An ensembler that combines the members' class probabilities."""

    space = "outputs"

    def fit(self, probabilities: list, labels) -> None:
        """Learn from the members' validation class probabilities (one ``[examples, classes]`` numpy array per
        member) and the validation labels (stacking). Default: nothing to learn."""

    @abstractmethod
    def combine(self, probabilities: list, weights: list[float]):
        """The ensemble's class probabilities from the members' (a ``[examples, classes]`` numpy array each) and
        their weights (normalised to sum to 1)."""

    def state(self) -> dict:
        """What :meth:`fit` learned, as JSON (written to the export's ``ensemble.json``; :meth:`load_state` reads
        it back when the ensemble is served). Default: nothing."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""


class KGRetriever(Technique):
    """Maps text to knowledge-graph facts and injects them into the examples."""

    family = "kg"

    @abstractmethod
    def enrich(self, examples: list[dict], run: Run) -> list[dict]:
        """Return the examples with knowledge injected (text injection happens here)."""

    def attach(self, model, run: Run):
        """Return the model with this retriever's knowledge attached (e.g. entity-embedding fusion); the default
        leaves the model as it is. Called after the adapters are applied."""
        return model


class Aggregator(Technique):
    """Combines the clients' updates of every federated round into the new global model, as a Flower strategy
    (:mod:`tessera.federated`). Selecting an aggregator makes the stage federated: the training split is shared out
    among ``federated.clients`` clients, each round trains on the sampled clients with tessera's trainer, and the
    aggregator's strategy merges what they send back (their trainable parameters only)."""

    family = "aggregator"
    not_distributed = (
        "a federated stage trains its clients one after another in one process (tessera's in-process Flower grid): "
        "run it with trainer.processes=1, or across machines with tessera federate"
    )
    #: Whether the aggregate depends on the clients' updates only through their (weighted) sum, so that secure
    #: aggregation, which hides every single update, can compute it (FedAvg yes; Krum, the median no).
    sum_only: ClassVar[bool] = True

    def min_clients(self) -> int:
        """The fewest clients a round must sample for this aggregator to work (Bulyan: 4f + 3). Default: 1."""
        return 1

    def root_examples(self) -> int:
        """Training examples the server keeps out of the clients' partitions as its own root set, which
        ``FederationContext.train_root`` trains on (FLTrust). Default: 0, none."""
        return 0

    def validate(self, composition: Composition) -> None:
        """The federation can run (:func:`tessera.federated.stage.validate_federation`: clients, rounds, sampling,
        the aggregator's own minimum). Subclasses that add checks call ``super().validate(composition)``."""
        from tessera.federated.stage import validate_federation

        validate_federation(self, composition)

    @abstractmethod
    def strategy(self, context: FederationContext):
        """The ``flwr.serverapp.strategy.Strategy`` that aggregates each round, built with
        ``**context.strategy_options`` (the sampling that the ``federated`` config asks for)."""


class Logger(Technique):
    """Records a run somewhere beyond the run directory (an experiment tracker), through the lifecycle events it
    implements as :data:`tessera.hookimpl` methods. Selected loggers add to the always-on built-in console and
    TensorBoard loggers; ``validate`` refuses a logger whose library is missing before any work."""

    family = "logger"


@dataclass
class FederationContext:
    """What an aggregator's strategy is built from: the run, the clients a round samples, the strategy options that
    sample them (Flower's ``fraction_train``, ``min_train_nodes``, ``min_available_nodes``; federated evaluation off)
    and ``train_root(arrays, server_round)``, a round of local training on the server's own root set (FLTrust;
    None unless the aggregator's ``root_examples()`` is positive)."""

    run: Run
    clients: int
    per_round: int
    strategy_options: dict
    train_root: Callable[[dict, int], dict] | None = None


@dataclass(frozen=True)
class Family:
    """One technique family: the single table entry that the registry, the hookspecs, the config schema and the
    ``tessera plugins`` listing are all derived from."""

    #: The family's name: its config group and registry key (``adapter=lora``).
    name: str
    #: The base class every technique of the family subclasses.
    base: type
    #: The registration hook that returns the family's classes (generated in :mod:`tessera.core.hookspecs`).
    hook: str
    #: What a technique of the family does (the hook's docstring).
    summary: str
    #: The config default (``none`` selects nothing); None: not a config group (graph loaders are named by a
    #: technique's ``graph`` parameter and by ``tessera kg``, not selected on their own).
    default: str | None = "none"


def _graph_loader_base() -> type:
    from tessera.graphs.loaders import GraphLoader

    return GraphLoader


#: The technique families, in the order of the pipeline's listing. Adding a family is one entry here.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "objective",
            Objective,
            "tessera_objectives",
            "An objective turns a batch into a loss and declares the model head it trains (``Objective.task``). "
            "Several objectives in one run are summed with their ``weight``.",
            default="classification",
        ),
        Family(
            "adapter",
            Adapter,
            "tessera_adapters",
            "An adapter transforms the model before training (LoRA, freezing...) and knows how to export it "
            "merged and, where it can, unmerged. ``adapter=none`` selects no adapter: full fine-tuning.",
            default="lora",
        ),
        Family(
            "augment",
            Augmenter,
            "tessera_augmenters",
            "An augmenter maps training examples to training examples, deterministically from a seed.",
        ),
        Family(
            "adversary",
            Adversary,
            "tessera_adversaries",
            "An adversary owns the backward seam of a training step (FGM, PGD, FreeLB...). At most one adversary "
            "is active in a run.",
        ),
        Family(
            "compress",
            Compressor,
            "tessera_compressors",
            "A compressor makes the trained model smaller or faster: after training on the merged model "
            "(``compress``, chained in config order, deciding how the export is written) or at the trainer's seams "
            "(``prepare``, ``training_loss``, lifecycle events).",
        ),
        Family(
            "ensemble",
            Ensembler,
            "tessera_ensemblers",
            "An ensembler combines the exports of several trained models (its members) in a stage that trains "
            "nothing: a ``WeightMerger`` merges their parameters into one model, an ``OutputCombiner`` combines "
            "their class probabilities.",
        ),
        Family(
            "kg",
            KGRetriever,
            "tessera_kg_retrievers",
            "A retriever maps text to knowledge-graph facts and injects them into the examples (and may attach "
            "knowledge to the model).",
        ),
        Family(
            "aggregator",
            Aggregator,
            "tessera_aggregators",
            "An aggregator combines the clients' updates of each federated round into a new global model, as a "
            "Flower strategy; selecting one makes the stage federated (``federated.clients``, ``federated.rounds``).",
        ),
        Family(
            "logger",
            Logger,
            "tessera_loggers",
            "A logger records the run's parameters, metrics and artifacts in an experiment tracker (MLflow) through "
            "the lifecycle events; the console and TensorBoard loggers are always on and need no selection.",
        ),
        Family(
            "kg_loader",
            _graph_loader_base(),
            "tessera_kg_loaders",
            "A graph loader is a source of knowledge graphs, named ``NAME`` or ``NAME:ARGUMENT`` by the ``graph`` "
            "parameter of the ``kg`` techniques and by ``tessera kg``; its ``load()`` returns a "
            ":class:`~tessera.graphs.store.KnowledgeGraph`.",
            default=None,
        ),
    )
}

#: The families that are config groups (selected on the command line), in table order.
CONFIG_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.default is not None)
