"""Built-in adapters: ``lora`` through PEFT (``adapter=none`` is full fine-tuning)."""

from dataclasses import dataclass, field
from typing import Optional

from tessera import hookimpl
from tessera.core.errors import IncompatibleError
from tessera.core.techniques import Adapter, TechniqueConfig


@dataclass
class LoraConfig(TechniqueConfig):
    """PEFT LoRA parameters (see ``peft.LoraConfig``)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    #: Module names (suffixes) to adapt, or ``[all-linear]``: every linear layer but the output head.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    #: Modules trained in full beside the adapters; null lets PEFT choose (the classification head).
    modules_to_save: Optional[list[str]] = None
    bias: str = "none"


class Lora(Adapter):
    """Low-rank adapters on the target modules; the rest of the base model is frozen."""

    name = "lora"
    Config = LoraConfig

    def validate(self, composition):
        from tessera.core.models import module_names

        targets = list(self.config.target_modules)
        if targets == ["all-linear"]:
            return
        names = module_names(composition.cfg.model, composition.task)
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rpartition(".")[2] for n, kind in names.items() if kind in ("Linear", "Conv1D")})
            raise IncompatibleError(
                self.label,
                f"model={composition.cfg.model.name}",
                f"the model has no modules named {missing} (its linear layers are named {', '.join(leaves)}): "
                "set adapter.lora.target_modules to some of them, or to [all-linear]",
            )

    def apply(self, model, run):
        import peft

        task_type = {
            "sequence-classification": peft.TaskType.SEQ_CLS,
            "causal-lm": peft.TaskType.CAUSAL_LM,
        }.get(run.composition.task)
        target = self.config.target_modules
        lora = peft.LoraConfig(
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules="all-linear" if list(target) == ["all-linear"] else list(target),
            modules_to_save=None if self.config.modules_to_save is None else list(self.config.modules_to_save),
            bias=self.config.bias,
            task_type=task_type,
        )
        return peft.get_peft_model(model, lora)

    def merge(self, model):
        return model.merge_and_unload()

    def save_unmerged(self, model, directory) -> bool:
        model.save_pretrained(directory)
        return True


@hookimpl
def tessera_adapters():
    return [Lora]
