"""A validated composition of techniques, and the run that executes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.plugins import Plugins
from tessera.core.registry import Registry
from tessera.core.techniques import CONFIG_FAMILIES, Technique


@dataclass
class Composition:
    """The techniques a config selects, instantiated in config order, with the plugins that may act in the run."""

    cfg: DictConfig
    plugins: Plugins
    techniques: dict[str, list[Technique]]
    #: The earlier stages of the job: ``{name: export directory}`` (None while a sweep is only validated), for
    #: techniques that name a stage (a teacher to distil from).
    earlier_stages: dict[str, Path | None] = field(default_factory=dict)
    #: The base model (``model.pretrained``) each earlier stage's model descends from through ``init``, so a
    #: technique can check an earlier stage's tokenizer before its export exists.
    earlier_bases: dict[str, str] = field(default_factory=dict)

    def selected(self, family: str) -> list[Technique]:
        """The techniques of ``family`` in config order."""
        return self.techniques[family]

    @property
    def task(self) -> str:
        """The task of the model the objectives train together (:data:`tessera.core.models.TASKS`)."""
        from tessera.core.models import TASKS

        return TASKS[frozenset(objective.task for objective in self.selected("objective"))]

    @property
    def item_builder(self):
        """The objective whose items the run trains on: the first that does not ride along, else the first."""
        objectives = self.selected("objective")
        return next((o for o in objectives if not o.rides_along), objectives[0])

    @property
    def needs_labels(self) -> bool:
        """Whether any objective needs labelled data."""
        return any(objective.needs_labels for objective in self.selected("objective"))

    def model_directory(self, reference: str, label: str) -> Path | None:
        """The Hugging Face model directory ``reference`` names: an earlier stage of the job (its export; None while
        that stage has not run), a run directory (its ``export/``) or a model directory. ``label`` names the option
        in the one-line error for anything else."""
        if reference in self.earlier_stages:
            export = self.earlier_stages[reference]
            return export if export is not None and (export / "config.json").is_file() else None
        path = Path(reference).expanduser()
        if (path / "export" / "config.json").is_file():
            return path / "export"
        if not (path / "config.json").is_file():
            stages = ", ".join(self.earlier_stages) or "none"
            raise ConfigError(
                f"{label}={reference} is neither an earlier stage of this job (earlier stages: {stages}) nor a run "
                "or Hugging Face model directory (no config.json)"
            )
        return path

    def describe(self) -> dict[str, list[str]]:
        """``{family: [names]}`` for the families that have a selection (for reports and model cards)."""
        return {family: [t.name for t in found] for family, found in self.techniques.items() if found}


def _instantiate(plugins: Plugins, installed: Registry, family: str, name: str, node: Any) -> Technique:
    """The technique ``family=name`` of the run's admitted ``plugins``, configured from ``node``; ``installed`` (every
    technique of the process) tells an excluded technique from an unknown one."""
    if name not in plugins.registry.names(family) and name in installed.names(family):
        raise ConfigError(
            f"{family} '{name}' comes from plugin '{installed.get(family, name).plugin}', which plugins.allow / "
            "plugins.block exclude from this run: admit the plugin or choose another technique"
        )
    spec = plugins.registry.get(family, name)
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) is spec.cls.Config:
        config = OmegaConf.to_object(node)
    else:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
        known = {f.name for f in dataclasses.fields(spec.cls.Config)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter {family}.{name}.{unknown[0]}: valid parameters are {', '.join(sorted(known))}"
            )
        config = spec.cls.Config(**(values or {}))
    return spec.cls(config)


def compose(
    cfg: DictConfig,
    plugins: Plugins,
    earlier_stages: dict[str, Path | None] | None = None,
    earlier_bases: dict[str, str] | None = None,
) -> Composition:
    """Instantiate and cross-check the techniques ``cfg`` selects, with the plugins of the process (``plugins``)
    restricted by ``cfg.plugins``; raise a ``ConfigError`` before any work. ``earlier_stages``, ``earlier_bases``:
    the job's stages before this one (:attr:`Composition.earlier_stages`, :attr:`Composition.earlier_bases`)."""
    admitted = plugins.restricted(
        None if cfg.plugins.allow is None else list(cfg.plugins.allow), list(cfg.plugins.block)
    )
    techniques = {
        family: [
            _instantiate(admitted, plugins.registry, family, name, node) for name, node in (cfg[family] or {}).items()
        ]
        for family in CONFIG_FAMILIES
    }
    composition = Composition(cfg, admitted, techniques, dict(earlier_stages or {}), dict(earlier_bases or {}))
    objectives = composition.selected("objective")
    if not objectives:
        raise ConfigError(f"no objective selected: choose one of {', '.join(admitted.registry.names('objective'))}")
    from tessera.core.models import TASKS

    if frozenset(objective.task for objective in objectives) not in TASKS:
        first, other = objectives[0], next(o for o in objectives if o.task != objectives[0].task)
        raise IncompatibleError(first.label, other.label, f"no model has both a {first.task} and a {other.task} head")
    builders = [objective for objective in objectives if not objective.rides_along]
    for other in builders[1:]:
        if type(other) is not type(builders[0]):
            raise IncompatibleError(builders[0].label, other.label, "each builds its own training items")
    adversaries = composition.selected("adversary")
    if len(adversaries) > 1:
        raise IncompatibleError(adversaries[0].label, adversaries[1].label, "a run has at most one adversary")
    compressors = composition.selected("compress")
    for terminal, after in zip(compressors, compressors[1:]):
        if terminal.terminal:
            raise IncompatibleError(
                terminal.label, after.label, f"{terminal.name}'s model cannot be compressed further: put it last"
            )
    for family, found in techniques.items():
        for position, technique in enumerate(found):
            technique.validate(composition)
            admitted.manager.register(technique, name=f"{family}={technique.name}#{position}")
    return composition


@dataclass
class Run:
    """One run (a stage of a job): its composition, directory and state shared with the plugins' event hooks."""

    composition: Composition
    dir: Path
    #: Set by the trainer: total optimizer steps of the run, and the step it starts from (after a resume).
    total_steps: int = 0
    start_step: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.events = Events(self)

    @property
    def cfg(self) -> DictConfig:
        """The resolved config of the run."""
        return self.composition.cfg

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files and logs: rank 0 of a run on several processes (the events
        fire on every rank; plugins that write check this), or the only process."""
        from tessera.core.distributed import is_main

        return is_main()

    @property
    def techniques(self) -> dict[str, list[Technique]]:
        """The selected techniques by family, in config order."""
        return self.composition.techniques


class Events:
    """The lifecycle events of one run as typed methods (tox's pattern): each calls its hook through pluggy, with
    ``run`` filled in, so tracing, wrappers and ``tryfirst`` / ``trylast`` work as documented."""

    def __init__(self, run: Run):
        self._run, self._hook = run, run.composition.plugins.hook

    def run_start(self) -> None:
        """``tessera_run_start``: the model is built and restored, training starts."""
        self._hook.tessera_run_start(run=self._run)

    def before_optimizer_step(self, model, step: int) -> None:
        """``tessera_before_optimizer_step``: the gradients of ``step`` are complete."""
        self._hook.tessera_before_optimizer_step(run=self._run, model=model, step=step)

    def step_end(self, step: int, metrics: dict) -> None:
        """``tessera_step_end``: optimizer step ``step`` is done."""
        self._hook.tessera_step_end(run=self._run, step=step, metrics=metrics)

    def epoch_end(self, epoch: int, metrics: dict) -> None:
        """``tessera_epoch_end``: epoch ``epoch`` is done and validated."""
        self._hook.tessera_epoch_end(run=self._run, epoch=epoch, metrics=metrics)

    def evaluation(self, split: str, metrics: dict) -> None:
        """``tessera_evaluation``: ``split`` was evaluated."""
        self._hook.tessera_evaluation(run=self._run, split=split, metrics=metrics)

    def federated_round_end(self, round_number: int, metrics: dict) -> None:
        """``tessera_federated_round_end``: round ``round_number`` of a federation is aggregated and validated."""
        self._hook.tessera_federated_round_end(run=self._run, round=round_number, metrics=metrics)

    def export(self, export_dir: Path) -> None:
        """``tessera_export``: the export is in place."""
        self._hook.tessera_export(run=self._run, export_dir=export_dir)

    def run_end(self, status: str, metrics: dict) -> None:
        """``tessera_run_end``: the run is over."""
        self._hook.tessera_run_end(run=self._run, status=status, metrics=metrics)
