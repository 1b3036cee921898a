"""``gradual_prune``: gradual magnitude pruning during training (Zhu & Gupta, 2017, "To prune, or not to prune").

The sparsity of every linear weight inside the transformer layers rises from ``initial_sparsity`` to ``sparsity``
on the cubic schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3`` between the optimizer steps
``start`` and ``end`` (fractions of the run's steps), the masks recomputed from the weights' magnitudes every
``every`` steps, so the network recovers from each small pruning step while it trains. The masks act at two
seams of the trainer: the masked gradients are zeroed before the optimizer step, and the masked weights are zeroed
again after it (AdamW's momentum would otherwise revive them). Pruned weights stay exactly zero, so after a resume
the masks are derived again from the restored weights at the schedule's current sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera import hookimpl
from tessera.core.compression import Compressed
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import check_fraction, layer_linears


@dataclass
class GradualPruneConfig(TechniqueConfig):
    """The schedule: the sparsity reached, where it starts from, and when and how often the masks are updated."""

    #: The final fraction of zeros in each linear weight of the transformer layers.
    sparsity: float = 0.5
    #: The sparsity of the first pruning step (at ``start``).
    initial_sparsity: float = 0.0
    #: The first pruning step, as a fraction of the run's optimizer steps.
    start: float = 0.0
    #: The step the final sparsity is reached at, as a fraction of the run's optimizer steps (the weights train on
    #: with the final masks after it).
    end: float = 0.75
    #: Optimizer steps between two mask updates (Δt).
    every: int = 10


def smallest_mask(weight, sparsity: float):
    """The boolean mask that keeps all but the ``round(sparsity * numel)`` smallest-magnitude entries of
    ``weight`` (ties broken by position, so the count is exact)."""
    import torch

    pruned = round(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if pruned:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:pruned]] = False
    return mask.view_as(weight)


class GradualPrune(Compressor):
    """Prunes the smallest weights little by little while the model trains, to ``sparsity`` per linear weight."""

    name = "gradual_prune"
    Config = GradualPruneConfig

    def __init__(self, config):
        super().__init__(config)
        self.modules: list = []
        self.masks: list | None = None
        self.total_steps = 0

    def validate(self, composition):
        config = self.config
        check_fraction(self.label, "sparsity", config.sparsity)
        check_fraction(self.label, "initial_sparsity", config.initial_sparsity)
        if config.initial_sparsity > config.sparsity:
            raise ConfigError(
                f"{self.label}: initial_sparsity={config.initial_sparsity} is above sparsity={config.sparsity}: "
                "the schedule only prunes more"
            )
        if not 0.0 <= config.start <= config.end <= 1.0:
            raise ConfigError(
                f"{self.label}: start={config.start} and end={config.end} must satisfy 0 <= start <= end <= 1 "
                "(fractions of the run's optimizer steps)"
            )
        if config.every < 1:
            raise ConfigError(f"{self.label}: every={config.every} must be at least 1 optimizer step")
        for adapter in composition.selected("adapter"):
            if adapter.owns_parameters:
                raise IncompatibleError(
                    self.label,
                    adapter.label,
                    f"{self.name} prunes the trained weights, and {adapter.name} trains weights beside them that "
                    "its merge adds back: use adapter=none (full fine-tuning)",
                )

    # --- the schedule ----------------------------------------------------------------------------------------

    def _steps(self) -> tuple[int, int]:
        """The first and the last pruning step (optimizer steps, 1-based)."""
        first = max(1, round(self.config.start * self.total_steps))
        return first, max(first, round(self.config.end * self.total_steps))

    def is_update(self, step: int) -> bool:
        """Whether the masks are recomputed at optimizer step ``step``."""
        first, last = self._steps()
        return step == last or (first <= step < last and (step - first) % self.config.every == 0)

    def sparsity_at(self, step: int) -> float:
        """The schedule's sparsity after optimizer step ``step``: 0 before the first pruning step, then the cubic
        schedule at the latest update, the final sparsity from the last pruning step on."""
        config = self.config
        first, last = self._steps()
        if step < first:
            return 0.0
        if step >= last:
            return config.sparsity
        updated = first + (step - first) // config.every * config.every
        progress = (updated - first) / (last - first)
        return config.sparsity + (config.initial_sparsity - config.sparsity) * (1.0 - progress) ** 3

    # --- the trainer's seams ---------------------------------------------------------------------------------

    def prepare(self, model, run):
        """Keep the linear layers to prune (the trainer trains these modules themselves: adapter=none)."""
        self.modules = [module for _, module in layer_linears(model)]
        return model

    def _recompute(self, sparsity: float) -> None:
        self.masks = [smallest_mask(module.weight, sparsity) for module in self.modules]
        self._apply()

    def _apply(self) -> None:
        import torch

        with torch.no_grad():
            for module, mask in zip(self.modules, self.masks):
                module.weight.mul_(mask)

    @hookimpl
    def tessera_run_start(self, run):
        """Derive the masks from the (restored) weights at the schedule's sparsity of the step the run starts
        from: the pruned weights are zero, so they are the smallest and the masks are the ones of the run that
        wrote the checkpoint."""
        self.total_steps = run.total_steps
        sparsity = self.sparsity_at(run.start_step)
        self.masks = None
        if sparsity > 0:
            self._recompute(sparsity)

    @hookimpl
    def tessera_before_optimizer_step(self, run, model, step):
        """Recompute the masks when the schedule says so, and zero the gradients of the pruned weights."""
        if self.is_update(step):
            self._recompute(self.sparsity_at(step))
        if self.masks is not None:
            for module, mask in zip(self.modules, self.masks):
                if module.weight.grad is not None:
                    module.weight.grad.mul_(mask)

    @hookimpl
    def tessera_step_end(self, run, step, metrics):
        """Zero the pruned weights again after the optimizer step (momentum and weight decay move them)."""
        if self.masks is not None:
            self._apply()

    def compress(self, model, context):
        """Make the masks permanent: every pruned linear weight at exactly the final sparsity."""
        self.modules = [module for _, module in layer_linears(model)]
        self._recompute(self.config.sparsity)
        return Compressed(
            model,
            details={
                "sparsity": self.config.sparsity,
                "initial_sparsity": self.config.initial_sparsity,
                "steps": list(self._steps()),
                "mask_updates": sum(self.is_update(step) for step in range(1, self.total_steps + 1)),
            },
        )
