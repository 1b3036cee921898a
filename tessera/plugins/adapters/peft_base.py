"""The base of the adapters PEFT builds (LoRA, DoRA, AdaLoRA, IA3, LoHa, LoKr, prefix and prompt tuning).

One place for what they share: PEFT's task type from the run's task, the checks before any work (target modules
the model lacks, one PEFT method per run, and a dry run of PEFT itself on the model built on the meta device),
merging for export, the unmerged PEFT directory, and whether vLLM can serve that directory as it is.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

from tessera.core.errors import IncompatibleError
from tessera.core.techniques import Adapter, TechniqueConfig

#: PEFT's task type of each tessera task; other tasks (masked-lm, pretraining, next-sentence) get a plain
#: ``PeftModel``, whose forward pass goes to the wrapped model unchanged.
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
#: PEFT's shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"
#: The step budget of the dry run before any work (the real one is known when the adapters are applied).
DRY_RUN_STEPS = 1000


@dataclass
class TargetedConfig(TechniqueConfig):
    """Parameters of a PEFT method that adapts chosen modules."""

    #: Module names (dotted suffixes such as ``query`` or ``self_attn.q_proj``) to adapt, or ``[all-linear]``:
    #: every linear layer but the output head.
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])


def peft_targets(modules):
    """``target_modules`` as PEFT takes it: the ``all-linear`` shorthand as a string, names as a list, or None."""
    if modules is None:
        return None
    return ALL_LINEAR if list(modules) == [ALL_LINEAR] else list(modules)


def meta_model(model_cfg, task: str):
    """The model ``model_cfg`` describes, with the head of ``task``, built on the meta device: its structure
    without weights or memory. A new one on each call (PEFT changes a model in place)."""
    import torch
    import transformers

    from tessera.core.models import AUTO_CLASSES, pretrained_path

    config = transformers.AutoConfig.from_pretrained(pretrained_path(model_cfg), **dict(model_cfg.config_overrides))
    with torch.device("meta"):
        return getattr(transformers, AUTO_CLASSES[task]).from_config(config)


def vllm_problems(config, task: str) -> list[str]:
    """Why vLLM's ``--lora-modules`` cannot serve the PEFT adapter ``config`` as the trained model (none: it can)."""
    method = getattr(config.peft_type, "value", config.peft_type)
    problems = []
    if method != "LORA":
        problems.append(f"vLLM serves LoRA adapters, not {method}")
    if getattr(config, "use_dora", False):
        problems.append("vLLM does not serve DoRA")
    if getattr(config, "bias", "none") != "none":
        problems.append("vLLM does not serve adapter biases")
    if task != "causal-lm":
        problems.append(f"vLLM serves LoRA on decoder language models, not on a {task} model")
    if getattr(config, "modules_to_save", None):
        problems.append(f"it trains {', '.join(sorted(set(config.modules_to_save)))} in full (modules_to_save)")
    return problems


class PeftAdapter(Adapter):
    """An adapter that PEFT builds: the base model is frozen, the adapter weights (and the task head) train.

    Subclasses return their PEFT configs from :meth:`peft_configs`; everything else is shared. The model is
    exported merged (``merge_and_unload``) and, unmerged, as a PEFT directory under ``adapters/<name>/``.
    """

    #: Whether PEFT folds the method into the base weights (``merge_and_unload``).
    mergeable = True
    #: What the export holds instead when the method cannot be merged (for the export note).
    unmerged_only = ""
    #: Set by :meth:`apply`: the run's task, for the export note.
    task: str = ""

    @abstractmethod
    def peft_configs(self, task_type: str | None, total_steps: int) -> dict:
        """``{adapter name: PEFT config}`` for a model of ``task_type`` trained for ``total_steps`` steps;
        one entry (``default``) unless the technique puts several named adapters on the model."""

    def task_type(self, task: str) -> str | None:
        """PEFT's task type for the run's ``task``."""
        return TASK_TYPES.get(task)

    def checked_modules(self) -> dict[str, list[str]]:
        """``{config key: module names}`` that the model must have (``[all-linear]`` and null need no check)."""
        targets = peft_targets(getattr(self.config, "target_modules", None))
        return {f"adapter.{self.name}.target_modules": targets} if isinstance(targets, list) else {}

    def build(self, model, task: str, total_steps: int):
        """``model`` wrapped by PEFT with every adapter of :meth:`peft_configs`, all of them active and trainable."""
        import peft

        configs = self.peft_configs(self.task_type(task), total_steps)
        (first, config), *others = configs.items()
        model = peft.get_peft_model(model, config, adapter_name=first)
        for name, other in others:
            model.add_adapter(name, other)
        if others:
            model.base_model.set_adapter(list(configs))
        return model

    # --- before any work ---------------------------------------------------------------------------------------

    def validate(self, composition):
        peft_adapters = [a for a in composition.selected("adapter") if isinstance(a, PeftAdapter)]
        if len(peft_adapters) > 1:
            first, second = peft_adapters[:2]
            raise IncompatibleError(
                first.label,
                second.label,
                "a run wraps its model in one PEFT method: use adapter=multi_lora for several LoRA adapters, or "
                "train the second method in another run on this run's export (model.pretrained=<run>/export)",
            )
        model = meta_model(composition.cfg.model, composition.task)
        self._check_modules(composition, {name: type(module).__name__ for name, module in model.named_modules()})
        self.check_model(composition, model)
        try:
            self.build(model, composition.task, DRY_RUN_STEPS)
        except (ValueError, NotImplementedError) as error:
            raise IncompatibleError(
                self.label, f"model={composition.cfg.model.name}", f"PEFT cannot apply it: {str(error).strip()}"
            ) from None

    def check_model(self, composition, model) -> None:
        """Raise ``IncompatibleError`` when the method cannot work on ``model`` (built on the meta device) in a way
        PEFT itself only finds out later; called before the dry run. The default finds nothing."""

    def _check_modules(self, composition, names: dict[str, str]) -> None:
        for key, wanted in self.checked_modules().items():
            missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
            if missing:
                leaves = sorted({n.rpartition(".")[2] for n, kind in names.items() if kind in ("Linear", "Conv1D")})
                raise IncompatibleError(
                    self.label,
                    f"model={composition.cfg.model.name}",
                    f"the model has no modules named {missing} (its linear layers are named {', '.join(leaves)}): "
                    f"set {key} to some of them, or to [all-linear]",
                )

    # --- training and export -----------------------------------------------------------------------------------

    def apply(self, model, run):
        self.task = run.composition.task
        return self.build(model, self.task, run.total_steps)

    def merge(self, model):
        return model.merge_and_unload()

    def save_unmerged(self, model, directory) -> bool:
        model.save_pretrained(directory)
        return True

    def export_note(self, model) -> str | None:
        notes = []
        for name, config in model.peft_config.items():
            where = f"adapters/{self.name}" + ("" if name == "default" else f"/{name}")
            problems = vllm_problems(config, self.task)
            if problems:
                notes.append(f"{where} cannot be served unmerged by vLLM ({'; '.join(problems)})")
            else:
                served = self.name if name == "default" else name
                notes.append(
                    f"{where} is served unmerged by vLLM: --enable-lora --lora-modules {served}=export/{where}"
                )
        merged = "export/ holds the merged model, the one to serve" if self.mergeable else self.unmerged_only
        return f"{'; '.join(notes)}; {merged}."
