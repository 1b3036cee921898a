"""The plugin contract: every hook tessera calls, in one module.

A plugin is any module or object with functions decorated by :data:`tessera.hookimpl` whose names match the
specifications below. tessera's own techniques and loggers are plugins registered through these very hooks;
third-party packages are found through the entry-point group ``tessera``.

There are two kinds of hooks.

**Registration hooks** (one per technique family, plus :func:`tessera_config_search_path`) are called once when the
plugin manager is built. Each returns a list of technique classes of its family (subclasses of the family base in
:mod:`tessera.core.techniques`); the class attributes ``name`` and ``Config`` give the technique's name on the
command line and its config dataclass, which is stored in Hydra's ConfigStore as ``<family>/<name>`` so that
``adapter=lora adapter.lora.r=16`` is type-checked. A name may be registered by one plugin only. Within a run the
pipeline calls the selected techniques of a family **in config order** (``adapter=[freeze,lora]`` applies
``freeze`` first), not in plugin order.

**Lifecycle events** are broadcast to every registered plugin that implements them, in pluggy's order (last
registered first; ``tryfirst=True`` / ``trylast=True`` move an implementation to the front or back). Their return
values are ignored. An exception in an event hook fails the run: a logger that must never fail should catch its
own errors. Every event receives ``run``, the :class:`tessera.core.run.Run` of the current job (its resolved
config ``run.cfg``, its directory ``run.dir`` and its selected techniques ``run.techniques``).
"""

import pluggy

hookspec = pluggy.HookspecMarker("tessera")


# --- registration: one hook per technique family ------------------------------------------------------------


@hookspec
def tessera_objectives():
    """Return the :class:`~tessera.core.techniques.Objective` classes this plugin provides.

    Family ``objective``. An objective turns a batch into a loss and declares the model head it trains
    (``Objective.task``). Several objectives in one run are summed with their ``weight``.
    """


@hookspec
def tessera_adapters():
    """Return the :class:`~tessera.core.techniques.Adapter` classes this plugin provides.

    Family ``adapter``. An adapter transforms the model before training (LoRA, freezing...) and knows how to
    export it merged and, where it can, unmerged. ``adapter=none`` selects no adapter: full fine-tuning.
    """


@hookspec
def tessera_augmenters():
    """Return the :class:`~tessera.core.techniques.Augmenter` classes this plugin provides.

    Family ``augment``. An augmenter maps training examples to training examples, deterministically from a seed.
    """


@hookspec
def tessera_adversaries():
    """Return the :class:`~tessera.core.techniques.Adversary` classes this plugin provides.

    Family ``adversary``. An adversary owns the backward seam of a training step (FGM, PGD, FreeLB...).
    At most one adversary is active in a run.
    """


@hookspec
def tessera_compressors():
    """Return the :class:`~tessera.core.techniques.Compressor` classes this plugin provides.

    Family ``compress``. A compressor transforms the trained model after evaluation (pruning, quantization...).
    """


@hookspec
def tessera_ensemblers():
    """Return the :class:`~tessera.core.techniques.Ensembler` classes this plugin provides.

    Family ``ensemble``. An ensembler combines the trained model with other models or their outputs.
    """


@hookspec
def tessera_kg_retrievers():
    """Return the :class:`~tessera.core.techniques.KGRetriever` classes this plugin provides.

    Family ``kg``. A retriever maps text to knowledge-graph facts and injects them into the examples.
    """


@hookspec
def tessera_kg_loaders():
    """Return the :class:`~tessera.graphs.loaders.GraphLoader` classes (knowledge-graph sources) this plugin provides.

    Each class has a ``name``, the source name of ``tessera kg ... NAME[:ARGUMENT]`` and of the ``graph`` parameter
    of the ``kg`` techniques, and a ``load()`` that returns a :class:`~tessera.graphs.store.KnowledgeGraph`.
    A name may be registered by one plugin only. Called when a graph source is resolved, not at start-up.
    """


@hookspec
def tessera_aggregators():
    """Return the :class:`~tessera.core.techniques.Aggregator` classes this plugin provides.

    Family ``aggregator``. An aggregator combines client updates into a new global model in federated runs.
    """


@hookspec
def tessera_config_search_path():
    """Return a list of Hydra search-path entries (``pkg://my_plugin.conf`` or ``file:///abs/dir``).

    Each entry is a config directory whose groups (``model/``, ``data/``, ``experiment/``...) are added to
    tessera's own, after them, so a plugin can ship presets such as ``experiment=my_recipe``.
    """


# --- lifecycle events ---------------------------------------------------------------------------------------


@hookspec
def tessera_run_start(run):
    """Called once per job after the composition is validated and the model is built, before training."""


@hookspec
def tessera_before_optimizer_step(run, model, step):
    """Called after the gradients of optimizer step ``step`` are complete (accumulated and clipped) and before the
    optimizer applies them: the seam for gradient transformations (masks, noise, logging of norms)."""


@hookspec
def tessera_step_end(run, step, metrics):
    """Called after every optimizer step.

    ``step`` is the global optimizer step (1-based); ``metrics`` is a dict with at least ``loss`` (mean over the
    accumulated micro-batches), ``lr``, ``samples_per_second`` and ``epoch`` (a float).
    """


@hookspec
def tessera_epoch_end(run, epoch, metrics):
    """Called after each epoch with its 1-based number and the validation metrics measured at its end."""


@hookspec
def tessera_evaluation(run, split, metrics):
    """Called after a split (``"validation"`` or ``"test"``) is evaluated, with its metrics dict."""


@hookspec
def tessera_export(run, export_dir):
    """Called after the model is exported to ``export_dir`` (a Hugging Face directory), before the run ends."""


@hookspec
def tessera_federated_round_end(run, round_number, metrics):
    """Called by the federated engine after each round is aggregated, with the round's 1-based number."""


@hookspec
def tessera_run_end(run, status, metrics):
    """Called once per job at its end: ``status`` is ``"complete"`` or ``"failed"``; ``metrics`` the test metrics
    (empty when the run failed). Loggers flush and close here. A run that fails before training (in augmentation,
    retrieval or model loading) ends without a ``tessera_run_start``."""
