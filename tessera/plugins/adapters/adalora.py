"""``adalora`` (Zhang et al., 2023): LoRA in SVD form whose rank budget moves, during training, to the modules
that matter most, through PEFT. Its schedule is the run's: ``total_step`` is the run's planned optimizer steps."""

from __future__ import annotations

from dataclasses import dataclass

from tessera import hookimpl
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.plugins.adapters.freezing_base import FreezingAdapter
from tessera.plugins.adapters.peft_base import PeftAdapter, TargetedConfig, peft_targets


@dataclass
class AdaLoraConfig(TargetedConfig):
    """PEFT AdaLoRA parameters; the phases are fractions of the run's optimizer steps."""

    #: Rank of every adapter at the start, and the average rank the budget shrinks to.
    init_r: int = 12
    target_r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    #: Fraction of the steps before the budget starts to shrink (PEFT's ``tinit``), and fraction at the end with
    #: the final ranks fixed (``tfinal``).
    initial_fraction: float = 0.1
    final_fraction: float = 0.2
    #: Steps between two reallocations of the budget (``deltaT``).
    interval: int = 10
    #: Weight of the orthogonality penalty on the singular vectors.
    orthogonal_weight: float = 0.5


class AdaLora(PeftAdapter):
    """AdaLoRA. It hears two events of its run: before each optimizer step it adds the gradient of its
    orthogonality penalty and scores and prunes the ranks (``update_and_allocate``, which needs the gradients);
    after the step it masks the pruned ranks again, so that the step cannot revive them."""

    name = "adalora"
    Config = AdaLoraConfig

    def validate(self, composition):
        config = self.config
        if not (
            0 <= config.initial_fraction
            and 0 <= config.final_fraction
            and config.initial_fraction + config.final_fraction < 1
        ):
            raise ConfigError(
                "adapter.adalora.initial_fraction and final_fraction must be non-negative with a sum below 1 "
                "(the rest of the steps is the budgeting phase)"
            )
        if config.target_r > config.init_r:
            raise ConfigError("adapter.adalora.target_r must not exceed adapter.adalora.init_r: the budget shrinks")
        from tessera.core.trainer import planned_steps

        if not planned_steps(composition.cfg.trainer, 1):
            raise self.no_budget(f"trainer.epochs={composition.cfg.trainer.epochs}")
        for adapter in composition.selected("adapter"):
            if isinstance(adapter, FreezingAdapter):
                raise IncompatibleError(
                    self.label,
                    adapter.label,
                    "AdaLoRA scores every adapter weight by its gradient, and a frozen weight has none",
                )
        super().validate(composition)

    def no_budget(self, cause: str) -> IncompatibleError:
        """The refusal of a run without a step budget; ``cause`` names the setting that leaves it without one."""
        return IncompatibleError(
            self.label,
            cause,
            "AdaLoRA spreads its rank budget over the run's optimizer steps, and this run plans none: "
            "train for at least one epoch (trainer.epochs) or set trainer.max_steps",
        )

    def peft_configs(self, task_type, total_steps):
        import peft

        config = self.config
        return {
            "default": peft.AdaLoraConfig(
                init_r=config.init_r,
                target_r=config.target_r,
                lora_alpha=config.alpha,
                lora_dropout=config.dropout,
                target_modules=peft_targets(config.target_modules),
                tinit=int(config.initial_fraction * total_steps),
                tfinal=int(config.final_fraction * total_steps),
                deltaT=config.interval,
                orth_reg_weight=config.orthogonal_weight,
                total_step=total_steps,
                task_type=task_type,
            )
        }

    def apply(self, model, run):
        if not run.total_steps:
            raise self.no_budget("a run without planned steps (run.total_steps is 0)")
        self.model = super().apply(model, run)
        return self.model

    @hookimpl
    def tessera_before_optimizer_step(self, run, model, step):
        self._add_orthogonal_penalty_gradient()
        self.model.base_model.update_and_allocate(step)

    @hookimpl
    def tessera_step_end(self, run, step, metrics):
        import torch

        pattern = self.model.peft_config["default"].rank_pattern
        if pattern:
            with torch.no_grad():
                self.model.base_model.rankallocator.mask_using_rank_pattern(self.model.base_model.model, pattern)

    def _add_orthogonal_penalty_gradient(self) -> None:
        """Add the gradient of PEFT's penalty ``mean ||P^T P - I||_F`` over the singular vectors ``P`` (PEFT adds
        the penalty to ``outputs.loss``, which tessera's objectives do not use)."""
        import torch

        if not self.config.orthogonal_weight:
            return
        terms = []
        with torch.enable_grad():
            for name, p in self.model.named_parameters():
                if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                    product = p @ p.T if "lora_A" in name else p.T @ p
                    terms.append(torch.linalg.matrix_norm(product - torch.eye(len(product), device=p.device)))
            if terms:
                (self.config.orthogonal_weight * torch.stack(terms).mean()).backward()
