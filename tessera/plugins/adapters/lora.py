"""``lora`` (Hu et al., 2021) and ``dora`` (Liu et al., 2024: LoRA with the weights split into magnitude and
direction) through PEFT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tessera.plugins.adapters.peft_base import PeftAdapter, TargetedConfig, peft_targets


@dataclass
class LoraParams(TargetedConfig):
    """The parameters of one LoRA adapter (see ``peft.LoraConfig``)."""

    r: int = 16
    alpha: int = 32
    #: Dropout on the adapter's input. 0 (PEFT's default): on the benchmark's CPU the 37 masks a step of 0.05 cost
    #: more than a fifth of a LoRA step, for no measured accuracy (docs/benchmarks.md, training throughput).
    dropout: float = 0.0

    def peft_config(self, task_type: str | None, **extra):
        """This adapter as a ``peft.LoraConfig``."""
        import peft

        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=peft_targets(self.target_modules),
            task_type=task_type,
            **extra,
        )


@dataclass
class LoraConfig(LoraParams):
    """PEFT LoRA parameters."""

    #: Modules trained in full beside the adapters; null lets PEFT choose (the classification head).
    modules_to_save: Optional[list[str]] = None
    bias: str = "none"


class Lora(PeftAdapter):
    """Low-rank adapters on the target modules; the rest of the base model is frozen."""

    name = "lora"
    Config = LoraConfig
    use_dora = False

    def peft_configs(self, task_type, total_steps):
        modules_to_save = self.config.modules_to_save
        return {
            "default": self.config.peft_config(
                task_type,
                modules_to_save=None if modules_to_save is None else list(modules_to_save),
                bias=self.config.bias,
                use_dora=self.use_dora,
            )
        }


class Dora(Lora):
    """DoRA: LoRA on the direction of each target weight plus a trained magnitude vector; merges like LoRA,
    but vLLM does not serve it unmerged."""

    name = "dora"
    use_dora = True
