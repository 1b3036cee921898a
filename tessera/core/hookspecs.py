"""The plugin contract: every hook tessera calls, in one module.

A plugin is any module or object with functions decorated by :data:`tessera.hookimpl` whose names match the
specifications below. tessera's own techniques and loggers are plugins registered through these very hooks;
third-party packages are found through the entry-point group ``tessera``.

There are two kinds of hooks.

**Registration hooks** (one per technique family, generated below from the family table
:data:`tessera.core.techniques.FAMILIES`, plus :func:`tessera_config_search_path`) are called through pluggy, for
each plugin on its own, when a plugin manager is built. Each returns a list of technique classes of its family (subclasses of the family base in
:mod:`tessera.core.techniques`); the class attributes ``name`` and ``Config`` give the technique's name on the
command line and its config dataclass, which is stored in Hydra's ConfigStore as ``<family>/<name>`` so that
``adapter=lora adapter.lora.r=16`` is type-checked. A name may be registered by one plugin only. Within a run the
pipeline calls the selected techniques of a family **in config order** (``adapter=[freeze,lora]`` applies
``freeze`` first), not in plugin order.

**Lifecycle events** are broadcast to every registered plugin that implements them, in pluggy's order (last
registered first; ``tryfirst=True`` / ``trylast=True`` move an implementation to the front or back). Their return
values are ignored. An exception in an event hook fails the run: a logger that must never fail should catch its
own errors. Every event receives ``run``, the :class:`tessera.core.run.Run` of the current run, one stage of the
job (its resolved config ``run.cfg``, its directory ``run.dir`` and its selected techniques ``run.techniques``).
On several processes (``trainer.processes``, docs/distributed.md) the events fire on every rank; a plugin that writes
files or logs does so only where ``run.is_main`` is true (rank 0, or the only process). tessera calls them through the typed methods of :class:`tessera.core.run.Events`.
"""

import pluggy

from tessera.core.techniques import FAMILIES

hookspec = pluggy.HookspecMarker("tessera")


# --- registration: one hook per technique family, generated from the family table ---------------------------


def _registration_spec(family):
    def spec():
        pass

    spec.__name__ = spec.__qualname__ = family.hook
    spec.__doc__ = (
        f"Return the :class:`~{family.base.__module__}.{family.base.__name__}` classes this plugin provides.\n\n"
        f"Family ``{family.name}``. {family.summary}"
    )
    return hookspec(spec)


for _family in FAMILIES.values():
    globals()[_family.hook] = _registration_spec(_family)


@hookspec
def tessera_config_search_path():
    """Return a list of Hydra search-path entries (``pkg://my_plugin.conf`` or ``file:///abs/dir``).

    Each entry is a config directory whose groups (``model/``, ``data/``, ``experiment/``...) are added to
    tessera's own, after them, so a plugin can ship presets such as ``experiment=my_recipe``.
    """


# --- lifecycle events ---------------------------------------------------------------------------------------


@hookspec
def tessera_run_start(run):
    """Called once per run (stage) after the model is built and any checkpoint restored, before training."""


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
    """Called after a split is evaluated, with its metrics dict: ``"validation"`` at the end of every complete epoch
    (right before ``tessera_epoch_end`` gets the same metrics) or, in a federated stage, of every round (right
    before ``tessera_federated_round_end``), ``"test"`` once after training, and
    ``"compressed"`` once after the post-training compressors changed the model (the final model's test metrics),
    before export."""


@hookspec
def tessera_federated_round_end(run, round, metrics):
    """Called after each round of a federated stage (right after ``tessera_evaluation("validation")`` gets the
    round's validation metrics), with the 1-based ``round`` and its record: ``clients`` (sampled), ``answered``,
    ``lost``, ``bytes_sent``, ``bytes_received``, ``train`` (the clients' aggregated training metrics),
    ``validation`` (the global model's) and ``seconds``."""


@hookspec
def tessera_export(run, export_dir):
    """Called after the model is exported to ``export_dir`` (a Hugging Face directory), before the run ends."""


@hookspec
def tessera_run_end(run, status, metrics):
    """Called once per run at its end with the status ``run.json`` records: ``"complete"``, ``"failed"`` or
    ``"interrupted"`` (Ctrl-C or SIGTERM); ``metrics`` the test metrics (empty unless complete). Loggers flush and close here. A run that fails before training (in augmentation,
    retrieval or model loading) ends without a ``tessera_run_start``."""
