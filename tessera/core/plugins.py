"""The plugin manager: built-in plugins first, then the entry-point group ``tessera``, filtered by name.

Built-in techniques register through the same hooks as third-party ones. A plugin that fails to import, to
register, or that implements an unknown hook is reported by name in :attr:`Plugins.failures` and skipped; the host
keeps working. ``TESSERA_PLUGINS_BLOCK=a,b`` blocks plugins by name; ``TESSERA_PLUGINS_ALLOW=a,b`` loads only the
named third-party plugins. The config keys ``plugins.block`` / ``plugins.allow`` do the same for one run.
``TESSERA_PLUGINS_STRICT=1`` turns a skipped plugin into an error (for a CI job).

There is no process-wide plugin manager: the command line calls :func:`discover` once and passes the
:class:`Plugins` it returns to everything that needs them (the job, Hydra's search path, the graph loaders).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

import tessera
from tessera.core import hookspecs
from tessera.core.errors import ConfigError, PluginError
from tessera.core.registry import Registry
from tessera.core.techniques import FAMILIES

ENTRY_POINT_GROUP = "tessera"
ALLOW_ENV = "TESSERA_PLUGINS_ALLOW"
BLOCK_ENV = "TESSERA_PLUGINS_BLOCK"
STRICT_ENV = "TESSERA_PLUGINS_STRICT"

#: Built-in plugins: name -> module. They are registered exactly like third-party ones.
BUILTIN_PLUGINS = {
    "tessera.objectives": "tessera.plugins.objectives",
    "tessera.adapters": "tessera.plugins.adapters",
    "tessera.console": "tessera.plugins.console_logger",
    "tessera.tensorboard": "tessera.plugins.tensorboard_logger",
    "tessera.mlflow": "tessera.plugins.mlflow_logger",
    "tessera.kg_loaders": "tessera.graphs.loaders.builtin",
    "tessera.retrievers": "tessera.plugins.retrievers",
    "tessera.augmenters": "tessera.plugins.augmenters",
    "tessera.adversaries": "tessera.plugins.adversaries",
    "tessera.compressors": "tessera.plugins.compressors",
    "tessera.ensemblers": "tessera.plugins.ensemblers",
    "tessera.aggregators": "tessera.plugins.aggregators",
}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name (entry-point name for third parties), distribution and version."""

    name: str
    distribution: str
    version: str
    builtin: bool


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    error: str


@dataclass
class Plugins:
    """A plugin manager with the plugins it holds, the failures it skipped and the techniques they registered."""

    manager: pluggy.PluginManager
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    registry: Registry = field(default_factory=Registry)
    #: Problems that skip nothing but deserve a line (a block list naming a plugin that is not installed).
    warnings: list[str] = field(default_factory=list)
    _objects: dict[str, object] = field(default_factory=dict)

    @property
    def hook(self):
        """The hook relay: ``plugins.hook.tessera_step_end(run=..., step=..., metrics=...)``."""
        return self.manager.hook

    def restricted(self, allow: list[str] | None, block: list[str]) -> Plugins:
        """A new manager holding only the plugins that ``allow`` / ``block`` admit (for one run's config)."""
        for name in [*(allow or []), *block]:
            if name not in self.infos:
                raise ConfigError(
                    f"plugins.allow / plugins.block name an unknown plugin '{name}': "
                    f"installed plugins are {', '.join(sorted(self.infos))}"
                )
        admitted = {
            name: obj for name, obj in self._objects.items() if _admitted(name, self.infos[name].builtin, allow, block)
        }
        return _build(admitted, self.infos, list(self.failures))

    def including(self, name: str, obj: object) -> Plugins:
        """A new manager with these plugins and ``obj`` registered as the built-in plugin ``name``: a command's own
        event subscriber (``tessera tune``'s pruning reporter), kept by every run's ``plugins.allow``."""
        infos = {**self.infos, name: PluginInfo(name, "tessera", tessera.__version__, builtin=True)}
        plugins = _build({**self._objects, name: obj}, infos, list(self.failures))
        plugins.warnings = list(self.warnings)
        return plugins

    def provider(self, family: str, name: str) -> str:
        """The plugin that provides ``family=name``."""
        return self.registry.get(family, name).plugin

    def config_search_path(self) -> list[str]:
        """The config directories that the plugins return from ``tessera_config_search_path``."""
        return [entry for entries in self.hook.tessera_config_search_path() for entry in entries or []]

    def check_strict(self, strict: bool = False) -> None:
        """Raise a ``PluginError`` when a plugin was skipped and ``strict`` (or ``TESSERA_PLUGINS_STRICT``) is on."""
        if self.failures and (strict or os.environ.get(STRICT_ENV, "").lower() not in ("", "0", "false", "no")):
            skipped = "; ".join(f"{f.name} ({f.error})" for f in self.failures)
            raise PluginError(f"strict mode: {len(self.failures)} plugin(s) skipped: {skipped}")


def _admitted(name: str, builtin: bool, allow: list[str] | None, block: list[str]) -> bool:
    if name in block:
        return False
    return builtin or allow is None or name in allow


def _env_list(variable: str) -> list[str] | None:
    value = os.environ.get(variable)
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _discover() -> tuple[dict[str, object], dict[str, PluginInfo], list[PluginFailure], list[str]]:
    """Import the built-in modules and every ``tessera`` entry point; failures are recorded, not raised."""
    allow, block = _env_list(ALLOW_ENV), _env_list(BLOCK_ENV) or []
    objects, infos, failures = {}, {}, []
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    known = {*BUILTIN_PLUGINS, *(entry_point.name for entry_point in entry_points)}
    warnings = [
        f"{BLOCK_ENV} names '{name}', which is not an installed plugin: installed plugins are "
        f"{', '.join(sorted(known))}"
        for name in block
        if name not in known
    ]
    for name, module in BUILTIN_PLUGINS.items():
        if _admitted(name, True, allow, block):
            objects[name] = importlib.import_module(module)
            infos[name] = PluginInfo(name, "tessera", tessera.__version__, builtin=True)
    for entry_point in entry_points:
        name = entry_point.name
        if name in objects or not _admitted(name, False, allow, block):
            continue
        dist = entry_point.dist
        try:
            objects[name] = entry_point.load()
        except Exception as error:  # a broken third-party plugin must not break the host
            failures.append(PluginFailure(name, f"import failed: {type(error).__name__}: {error}"))
            continue
        infos[name] = PluginInfo(name, dist.name if dist else "?", dist.version if dist else "?", builtin=False)
    return objects, infos, failures, warnings


def _build(objects: dict[str, object], infos: dict[str, PluginInfo], failures: list[PluginFailure]) -> Plugins:
    """Register ``objects`` on a fresh manager, collect their techniques, and drop the ones that misbehave."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager, failures=failures)
    for name, obj in objects.items():
        try:
            manager.register(obj, name=name)
            unknown = [caller.name for caller in manager.get_hookcallers(obj) or [] if not caller.has_spec()]
            if unknown:
                raise PluginError(f"implements unknown hooks {unknown}; see docs/plugins.md for the hook names")
            others = [other for other in manager.get_plugins() if other is not obj]
            for family in FAMILIES.values():
                for classes in manager.subset_hook_caller(family.hook, remove_plugins=others)():
                    for cls in classes or []:
                        plugins.registry.add(family.name, cls, name)
        except Exception as error:
            if manager.is_registered(obj):
                manager.unregister(obj)
            plugins.failures.append(PluginFailure(name, f"{type(error).__name__}: {error}"))
            plugins.registry = plugins.registry.without(name)
            continue
        plugins.infos[name] = infos[name]
        plugins._objects[name] = obj
    return plugins


def discover() -> Plugins:
    """Build the plugins of this process: the built-ins, then the ``tessera`` entry points, filtered by the
    environment's allow / block lists. Call it once per command and pass the result on."""
    objects, infos, failures, warnings = _discover()
    plugins = _build(objects, infos, failures)
    plugins.warnings = warnings
    return plugins
