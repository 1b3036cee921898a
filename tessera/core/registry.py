"""The technique registry: every technique by family and name, with the plugin that provides it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tessera.core.errors import ConfigError, PluginError
from tessera.core.techniques import CONFIG_FAMILIES, FAMILIES


@dataclass(frozen=True)
class TechniqueSpec:
    """One registered technique: its class and the plugin that registered it."""

    family: str
    name: str
    cls: type
    plugin: str


class Registry:
    """Techniques by family and name. Filled from the registration hooks by :mod:`tessera.core.plugins`."""

    def __init__(self):
        self._specs: dict[str, dict[str, TechniqueSpec]] = {family: {} for family in FAMILIES}

    def add(self, family: str, cls: type, plugin: str) -> None:
        """Register ``cls`` under ``family``; refuses a class of the wrong family, a bad config or a taken name."""
        base = FAMILIES[family].base
        name = getattr(cls, "name", None)
        if not (isinstance(cls, type) and issubclass(cls, base)) or not isinstance(name, str):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {family} technique, but it is not a subclass of "
                f"{base.__module__}.{base.__name__} with a string `name`: fix the plugin's registration hook"
            )
        if family in CONFIG_FAMILIES and not dataclasses.is_dataclass(cls.Config):
            raise PluginError(f"plugin '{plugin}': {family} '{name}' has a Config that is not a dataclass")
        taken = self._specs[family].get(name)
        if taken is not None and taken.cls is not cls:
            raise PluginError(
                f"plugin '{plugin}' registers {family} '{name}', already registered by plugin '{taken.plugin}': "
                "rename one of them or block one plugin (TESSERA_PLUGINS_BLOCK)"
            )
        self._specs[family][name] = TechniqueSpec(family, name, cls, plugin)

    def get(self, family: str, name: str) -> TechniqueSpec:
        """The technique ``family=name``; an unknown name raises a ``ConfigError`` listing the valid ones."""
        spec = self._specs[family].get(name)
        if spec is None:
            raise ConfigError(f"unknown {family} '{name}': choose one of {self.choices(family)}")
        return spec

    def names(self, family: str) -> list[str]:
        """The registered technique names of ``family``, sorted."""
        return sorted(self._specs[family])

    def choices(self, family: str) -> str:
        """The valid names of ``family`` for a message (``none`` included for config groups)."""
        return ", ".join([*(["none"] if family in CONFIG_FAMILIES else []), *self.names(family)])

    def specs(self) -> list[TechniqueSpec]:
        """Every registered technique, by family then name."""
        return [self._specs[f][n] for f in FAMILIES for n in self.names(f)]

    def without(self, plugin: str) -> Registry:
        """A copy of the registry without the techniques of ``plugin``."""
        cleaned = Registry()
        for spec in self.specs():
            if spec.plugin != plugin:
                cleaned.add(spec.family, spec.cls, spec.plugin)
        return cleaned

    def store_configs(self) -> None:
        """Put every technique's config dataclass in Hydra's ConfigStore as ``<family>/<name>``.

        Each lands at the package ``<family>.<name>`` so several techniques of a family stack in config order
        (``adapter=[freeze,lora]``); ``<family>/none`` selects nothing.
        """
        from hydra.core.config_store import ConfigStore

        store = ConfigStore.instance()
        for family in CONFIG_FAMILIES:
            store.store(group=family, name="none", node={}, package=family, provider="tessera")
        for spec in self.specs():
            if spec.family in CONFIG_FAMILIES:
                store.store(
                    group=spec.family,
                    name=spec.name,
                    node=spec.cls.Config,
                    package=f"{spec.family}.{spec.name}",
                    provider=spec.plugin,
                )
