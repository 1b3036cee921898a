"""``linear_probe``: train the task head alone on the frozen model (a linear probe of its features)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.core.errors import IncompatibleError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.freezing_base import FreezingAdapter
from tessera.plugins.adapters.layers import HEAD_MODULES, is_within


@dataclass
class LinearProbeConfig(TechniqueConfig):
    """Which modules are the head."""

    #: The modules that keep training (dotted names as in the model: ``classifier``, ``score``, ``cls.predictions``).
    head_modules: list[str] = field(default_factory=lambda: list(HEAD_MODULES))


class LinearProbe(FreezingAdapter):
    """Freezes everything trainable but the head."""

    name = "linear_probe"
    Config = LinearProbeConfig

    def validate(self, composition):
        from tessera.core.models import module_names

        names = module_names(composition.cfg.model, composition.task)
        if not any(is_within(name, self.config.head_modules) for name in names):
            tops = sorted({name.partition(".")[0] for name in names if name})
            raise IncompatibleError(
                self.label,
                f"model={composition.cfg.model.name}",
                f"its {composition.task} model has no module named {list(self.config.head_modules)}: set "
                f"adapter.linear_probe.head_modules to its head (its top-level modules are {', '.join(tops)})",
            )

    def apply(self, model, run):
        for name, parameter in self.trainable(model).items():
            parameter.requires_grad = is_within(name, self.config.head_modules)
        return model
