"""``gradual_unfreeze``: ULMFiT's gradual unfreezing (Howard & Ruder, 2018), by optimizer steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tessera import hookimpl
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.freezing_base import FreezingAdapter
from tessera.plugins.adapters.layers import depth, layer_count, require_layers


@dataclass
class GradualUnfreezeConfig(TechniqueConfig):
    """The schedule."""

    #: Optimizer steps between two unfreezings; null spreads them evenly over the run. ULMFiT unfreezes one layer
    #: per epoch: set it to the steps of an epoch.
    interval: Optional[int] = None


class GradualUnfreeze(FreezingAdapter):
    """Training starts with the top alone (the head and everything above the layers); every ``interval`` steps the
    next layer down joins, the embeddings last. It acts on the parameters the other adapters own (with a PEFT
    adapter: on its adapter weights and the head), or on the whole model alone.

    It hears two events of its run: ``tessera_run_start`` freezes what the schedule holds back (the optimizer was
    built with every parameter, so unfrozen ones train from then on), ``tessera_step_end`` unfreezes on schedule.
    """

    name = "gradual_unfreeze"
    Config = GradualUnfreezeConfig

    def validate(self, composition):
        if self.config.interval is not None and self.config.interval < 1:
            raise ConfigError(f"adapter.gradual_unfreeze.interval={self.config.interval} must be at least 1 step")
        require_layers(self, composition)

    def apply(self, model, run):
        layers = layer_count(name for name, _ in model.named_parameters())
        self.top = layers + 1
        self.depths = {name: (p, depth(name, layers)) for name, p in self.trainable(model).items()}
        if self.config.interval is None and not run.total_steps:
            raise IncompatibleError(
                self.label, "a run without planned steps", "set adapter.gradual_unfreeze.interval to a number of steps"
            )
        self.interval = self.config.interval or max(1, run.total_steps // (layers + 2))
        return model

    def lowest_trained_depth(self, step: int) -> int:
        """The lowest depth that trains after ``step`` optimizer steps (0: everything)."""
        return max(0, self.top - step // self.interval)

    def unfreeze_to(self, step: int) -> None:
        """Set which of its parameters train after ``step`` optimizer steps."""
        lowest = self.lowest_trained_depth(step)
        for parameter, at in self.depths.values():
            parameter.requires_grad = at >= lowest

    @hookimpl
    def tessera_run_start(self, run):
        self.unfreeze_to(run.start_step)

    @hookimpl
    def tessera_step_end(self, run, step, metrics):
        self.unfreeze_to(step)
