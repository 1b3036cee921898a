"""A validated composition of techniques, and the run that executes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.plugins import Plugins, get_plugins
from tessera.core.techniques import FAMILIES, Technique


@dataclass
class Composition:
    """The techniques a config selects, instantiated in config order, with the plugins that may act in the run."""

    cfg: DictConfig
    plugins: Plugins
    techniques: dict[str, list[Technique]]

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

    def describe(self) -> dict[str, list[str]]:
        """``{family: [names]}`` for the families that have a selection (for reports and model cards)."""
        return {family: [t.name for t in found] for family, found in self.techniques.items() if found}


def _instantiate(plugins: Plugins, family: str, name: str, node: Any) -> Technique:
    full = get_plugins().registry
    if name not in plugins.registry.names(family) and name in full.names(family):
        raise ConfigError(
            f"{family} '{name}' comes from plugin '{full.get(family, name).plugin}', which plugins.allow / "
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


def compose(cfg: DictConfig) -> Composition:
    """Instantiate and cross-check the techniques ``cfg`` selects; raise a ``ConfigError`` before any work."""
    plugins = get_plugins().restricted(
        None if cfg.plugins.allow is None else list(cfg.plugins.allow), list(cfg.plugins.block)
    )
    techniques = {
        family: [_instantiate(plugins, family, name, node) for name, node in (cfg[family] or {}).items()]
        for family in FAMILIES
    }
    composition = Composition(cfg, plugins, techniques)
    objectives = composition.selected("objective")
    if not objectives:
        raise ConfigError(f"no objective selected: choose one of {', '.join(plugins.registry.names('objective'))}")
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
    for family, found in techniques.items():
        for position, technique in enumerate(found):
            technique.validate(composition)
            plugins.manager.register(technique, name=f"{family}={technique.name}#{position}")
    return composition


@dataclass
class Run:
    """One job of ``tessera train``: its composition, directory and state shared with the plugins' event hooks."""

    composition: Composition
    dir: Path
    #: Set by the trainer: total optimizer steps of the run, and the step it starts from (after a resume).
    total_steps: int = 0
    start_step: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> DictConfig:
        """The resolved config of the run."""
        return self.composition.cfg

    @property
    def techniques(self) -> dict[str, list[Technique]]:
        """The selected techniques by family, in config order."""
        return self.composition.techniques

    def emit(self, event: str, **kwargs: Any) -> None:
        """Broadcast the lifecycle event ``tessera_<event>`` to the run's plugins."""
        getattr(self.composition.plugins.hook, f"tessera_{event}")(run=self, **kwargs)
