"""``prefix``: prefix tuning (Li & Liang, 2021: trained key / value prefixes in every attention layer) or prompt
tuning (Lester et al., 2021: trained virtual tokens before the input embeddings), through PEFT.

Neither folds into the base weights: the export holds the base model (with its trained task head) and, in
``adapters/prefix/``, the PEFT directory that reproduces the trained model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.adapters.peft_base import PeftAdapter

KINDS = ("prefix", "prompt")


@dataclass
class PrefixConfig(TechniqueConfig):
    """Prefix / prompt tuning parameters (see ``peft.PrefixTuningConfig`` and ``peft.PromptTuningConfig``)."""

    #: ``prefix``: key / value prefixes in every layer; ``prompt``: virtual tokens before the input.
    kind: str = "prefix"
    num_virtual_tokens: int = 20
    #: Prefix only: produce the prefixes through a two-layer MLP while training (more stable, more weights).
    projection: bool = False


class Prefix(PeftAdapter):
    """Trained virtual tokens (as prefixes of every layer's keys and values, or before the input); the base model
    is frozen, the task head trains."""

    name = "prefix"
    Config = PrefixConfig
    mergeable = False
    unmerged_only = (
        "prefix tuning does not fold into the weights: export/ holds the base model with its trained head but "
        "WITHOUT the learned prefixes (its predictions differ from the trained model's); "
        "peft.PeftModel.from_pretrained(base, 'export/adapters/prefix') reproduces the trained model"
    )

    def task_type(self, task):
        # PEFT's plain PeftModel has no prompt-learning forward pass; feature extraction passes everything through.
        return super().task_type(task) or "FEATURE_EXTRACTION"

    def validate(self, composition):
        kind, task = self.config.kind, composition.task
        if kind not in KINDS:
            raise ConfigError(f"adapter.prefix.kind={kind} is not one of {', '.join(KINDS)}")
        if kind == "prompt" and task != "sequence-classification":
            raise IncompatibleError(
                f"{self.label} (kind=prompt)",
                f"a {task} objective",
                "prompt tuning lengthens every sequence by its virtual tokens, so token-level outputs no longer line "
                "up with the labels: use adapter.prefix.kind=prefix",
            )
        super().validate(composition)

    def check_model(self, composition, model):
        carriers = (model, *model.children())
        if self.config.kind == "prefix" and not any(
            "past_key_values" in inspect.signature(m.forward).parameters for m in carriers
        ):
            raise IncompatibleError(
                self.label,
                f"model={composition.cfg.model.name}",
                f"PEFT cannot apply prefix tuning to {type(model).__name__}: it takes no past_key_values, which "
                "carry the prefixes (try adapter.prefix.kind=prompt or adapter=lora)",
            )

    def peft_configs(self, task_type, total_steps):
        import peft

        if self.config.kind == "prompt":
            config = peft.PromptTuningConfig(num_virtual_tokens=self.config.num_virtual_tokens, task_type=task_type)
        else:
            config = peft.PrefixTuningConfig(
                num_virtual_tokens=self.config.num_virtual_tokens,
                prefix_projection=self.config.projection,
                task_type=task_type,
            )
        return {"default": config}

    def merge(self, model):
        """The base model, with PEFT's trained copies of whole modules (the task head) put in place."""
        base = model.get_base_model()
        for name, module in list(base.named_modules()):
            if hasattr(module, "unload_and_optionally_merge_module"):
                parent, _, child = name.rpartition(".")
                trained = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
                setattr(base.get_submodule(parent), child, trained)
        return base
