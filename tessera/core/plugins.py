"""The plugin manager: built-in plugins first, then the entry-point group ``tessera``, filtered by name.

Built-in techniques register through the same hooks as third-party ones. A plugin that fails to import, to
register, or that implements an unknown hook is reported by name in :attr:`Plugins.failures` and skipped; the host
keeps working. ``TESSERA_PLUGINS_BLOCK=a,b`` blocks plugins by name; ``TESSERA_PLUGINS_ALLOW=a,b`` loads only the
named third-party plugins. The config keys ``plugins.block`` / ``plugins.allow`` do the same for one run.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

import tessera
from tessera.core import hookspecs
from tessera.core.errors import ConfigError, PluginError
from tessera.core.registry import Registry
from tessera.core.techniques import FAMILY_HOOKS

ENTRY_POINT_GROUP = "tessera"
ALLOW_ENV = "TESSERA_PLUGINS_ALLOW"
BLOCK_ENV = "TESSERA_PLUGINS_BLOCK"

#: Built-in plugins: name -> module. They are registered exactly like third-party ones.
BUILTIN_PLUGINS = {
    "tessera.objectives": "tessera.plugins.objectives",
    "tessera.adapters": "tessera.plugins.adapters",
    "tessera.console": "tessera.plugins.console_logger",
    "tessera.tensorboard": "tessera.plugins.tensorboard_logger",
    "tessera.kg_loaders": "tessera.graphs.loaders.builtin",
    "tessera.retrievers": "tessera.plugins.retrievers",
    "tessera.augmenters": "tessera.plugins.augmenters",
    "tessera.adversaries": "tessera.plugins.adversaries",
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
            name: obj
            for name, obj in self._objects.items()
            if _admitted(name, self.infos[name].builtin, allow, block)
        }
        return _build(admitted, self.infos, list(self.failures))


def _admitted(name: str, builtin: bool, allow: list[str] | None, block: list[str]) -> bool:
    if name in block:
        return False
    return builtin or allow is None or name in allow


def _env_list(variable: str) -> list[str] | None:
    value = os.environ.get(variable)
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _discover() -> tuple[dict[str, object], dict[str, PluginInfo], list[PluginFailure]]:
    """Import the built-in modules and every ``tessera`` entry point; failures are recorded, not raised."""
    allow, block = _env_list(ALLOW_ENV), _env_list(BLOCK_ENV) or []
    objects, infos, failures = {}, {}, []
    for name, module in BUILTIN_PLUGINS.items():
        if _admitted(name, True, allow, block):
            objects[name] = importlib.import_module(module)
            infos[name] = PluginInfo(name, "tessera", tessera.__version__, builtin=True)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
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
    return objects, infos, failures


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
            for family, hook_name in FAMILY_HOOKS.items():
                for impl in getattr(manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is obj:
                        for cls in impl.function() or []:
                            plugins.registry.add(family, cls, name)
        except Exception as error:
            if manager.is_registered(obj):
                manager.unregister(obj)
            plugins.failures.append(PluginFailure(name, f"{type(error).__name__}: {error}"))
            plugins.registry = _without(plugins.registry, name)
            continue
        plugins.infos[name] = infos[name]
        plugins._objects[name] = obj
    return plugins


def _without(registry: Registry, plugin: str) -> Registry:
    cleaned = Registry()
    for spec in registry.specs():
        if spec.plugin != plugin:
            cleaned.add(spec.family, spec.cls, spec.plugin)
    return cleaned


@functools.cache
def get_plugins() -> Plugins:
    """The process-wide plugins (environment filters applied), built on first use."""
    return _build(*_discover())


def load_plugins() -> Plugins:
    """Rebuild the process-wide plugins from scratch (after installing or uninstalling a plugin package)."""
    get_plugins.cache_clear()
    return get_plugins()
