"""``loha`` (low-rank Hadamard product, FedPara / LyCORIS) and ``lokr`` (low-rank Kronecker product, LyCORIS)
through PEFT: LoRA's relatives that reach a higher rank for the same number of weights."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.plugins.adapters.peft_base import PeftAdapter, TargetedConfig, peft_targets


@dataclass
class LycorisConfig(TargetedConfig):
    """Parameters shared by LoHa and LoKr (see ``peft.LoHaConfig`` / ``peft.LoKrConfig``)."""

    r: int = 8
    alpha: int = 8
    #: Dropout of whole ranks, and probability of skipping a whole adapted module, during training.
    rank_dropout: float = 0.0
    module_dropout: float = 0.0


class LoHa(PeftAdapter):
    """LoHa: each weight update is the Hadamard product of two low-rank products."""

    name = "loha"
    Config = LycorisConfig
    peft_class = "LoHaConfig"

    def peft_configs(self, task_type, total_steps):
        import peft

        config = self.config
        return {
            "default": getattr(peft, self.peft_class)(
                r=config.r,
                alpha=config.alpha,
                rank_dropout=config.rank_dropout,
                module_dropout=config.module_dropout,
                target_modules=peft_targets(config.target_modules),
                task_type=task_type,
            )
        }


class LoKr(LoHa):
    """LoKr: each weight update is the Kronecker product of a small matrix and a low-rank one."""

    name = "lokr"
    peft_class = "LoKrConfig"
