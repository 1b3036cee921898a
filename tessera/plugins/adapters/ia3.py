"""``ia3`` (Liu et al., 2022, "(IA)^3"): learned vectors that rescale the keys, values and feed-forward
activations, through PEFT; the fewest trained weights of the PEFT methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.peft_base import PeftAdapter, peft_targets


@dataclass
class IA3Config(TechniqueConfig):
    """PEFT IA3 parameters; null lets PEFT pick the modules it knows for the architecture (BERT: key, value,
    output.dense; Llama: k_proj, v_proj, down_proj)."""

    target_modules: Optional[list[str]] = None
    #: The target modules whose input (not output) is rescaled: the feed-forward ones; a subset of target_modules.
    feedforward_modules: Optional[list[str]] = None


class IA3(PeftAdapter):
    """Rescaling vectors on the attention and feed-forward modules; the rest of the base model is frozen."""

    name = "ia3"
    Config = IA3Config

    def checked_modules(self):
        checked = super().checked_modules()
        if self.config.feedforward_modules:
            checked["adapter.ia3.feedforward_modules"] = list(self.config.feedforward_modules)
        return checked

    def peft_configs(self, task_type, total_steps):
        import peft

        return {
            "default": peft.IA3Config(
                target_modules=peft_targets(self.config.target_modules),
                feedforward_modules=peft_targets(self.config.feedforward_modules),
                task_type=task_type,
            )
        }
