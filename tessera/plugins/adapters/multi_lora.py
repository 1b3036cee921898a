"""``multi_lora``: several named LoRA adapters on one base model (PEFT's ``add_adapter``), each with its own
targets and rank, trained together in one run and exported one PEFT directory each.

    tessera train adapter=multi_lora \\
      'adapter.multi_lora.adapters={attention: {target_modules: [query, value]}, ffn: {target_modules: [intermediate.dense], r: 4}}'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tessera.core.errors import ConfigError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.layers import HEAD_MODULES, is_within
from tessera.plugins.adapters.lora import LoraParams
from tessera.plugins.adapters.peft_base import PeftAdapter, peft_targets


@dataclass
class MultiLoraConfig(TechniqueConfig):
    """The named adapters: ``{name: LoRA parameters (r, alpha, dropout, target_modules)}``."""

    adapters: dict[str, LoraParams] = field(default_factory=dict)

    def __post_init__(self):
        self.adapters = {
            name: params if isinstance(params, LoraParams) else LoraParams(**params)
            for name, params in self.adapters.items()
        }


class MultiLora(PeftAdapter):
    """Named LoRA adapters, all active and trained together; a sequence-classification head trains in full beside
    them. The merged export holds their sum; ``adapters/multi_lora/<name>/`` holds each one alone (without the
    head), which is not the trained model on its own."""

    name = "multi_lora"
    Config = MultiLoraConfig

    def validate(self, composition):
        names = list(self.config.adapters)
        if not names:
            raise ConfigError(
                "adapter=multi_lora needs its adapters: adapter.multi_lora.adapters="
                "'{attention: {target_modules: [query, value]}, ffn: {target_modules: [intermediate.dense], r: 4}}'"
            )
        if "default" in names:
            raise ConfigError("adapter.multi_lora.adapters: 'default' is PEFT's unnamed adapter: choose another name")
        super().validate(composition)

    def checked_modules(self):
        return {
            f"adapter.multi_lora.adapters.{name}.target_modules": targets
            for name, params in self.config.adapters.items()
            if isinstance(targets := peft_targets(params.target_modules), list)
        }

    def task_type(self, task):
        # PEFT's sequence-classification model gives each adapter its own copy of the head, and a copy cannot be
        # shared by several active adapters: a plain PeftModel, with the base model's head trained in place.
        return None

    def peft_configs(self, task_type, total_steps):
        return {name: params.peft_config(task_type) for name, params in self.config.adapters.items()}

    def build(self, model, task, total_steps):
        model = super().build(model, task, total_steps)
        if task == "sequence-classification":
            for name, parameter in model.named_parameters():
                if is_within(name, HEAD_MODULES):
                    parameter.requires_grad = True
        return model

    def export_note(self, model):
        return "the named adapters were trained together, with the head: each alone is not the trained model; " + (
            super().export_note(model)
        )
