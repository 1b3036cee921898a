"""``peft_merge``: the members' LoRA adapters merged as adapters, by PEFT's ``add_weighted_adapter`` (combination
``cat``, ``linear``, ``svd``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` and their ``_svd``
forms), on the stage's base model. For causal language models: the members' heads are the base's, so the result is
one adapter, written to ``export/adapters/merged`` (vLLM serves it on the base model) beside the merged weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import EnsembleConfig, WeightMerger
from tessera.plugins.ensemblers.task_vectors import check_density, check_majority_sign

#: PEFT's combination types; those that trim or elect signs take the members' relative weights (mean 1).
COMBINATIONS = (
    "cat",
    "linear",
    "svd",
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
#: The name of the merged adapter, in the export (``adapters/merged``) and for vLLM's ``--lora-modules``.
MERGED = "merged"


@dataclass
class PeftMergeConfig(EnsembleConfig):
    """How PEFT combines the adapters."""

    #: ``cat``: the adapters side by side (rank = the sum of theirs; the weighted sum of their updates, exactly);
    #: ``linear``: A and B averaged (same rank only); ``svd``: the weighted update refactored to rank ``svd_rank``;
    #: ``ties`` / ``dare_*`` / ``magnitude_prune``: those merges on A and B (``density``, ``majority_sign``; the
    #: ``dare_*`` drops are drawn from ``trainer.seed``).
    combination: str = "cat"
    #: The fraction kept by ``ties``, ``dare_*`` and ``magnitude_prune``.
    density: float = 0.2
    #: The sign election of the ``ties`` kinds: ``total`` or ``frequency``.
    majority_sign: str = "total"
    #: The rank of the ``_svd`` combinations; null: the largest member rank.
    svd_rank: int | None = None


def member_adapter(member) -> Path:
    """The member's unmerged LoRA adapter (a PEFT directory under ``export/adapters/``), refused in one line when
    it has none or another kind."""
    found = sorted(p.parent for p in (member.export / "adapters").glob("*/adapter_config.json"))
    if len(found) != 1:
        raise ConfigError(
            f"ensemble=peft_merge: member {member.name} has {len(found)} unmerged adapters under export/adapters "
            "(needs exactly one LoRA adapter: train it with adapter=lora and no compress)"
        )
    config = json.loads((found[0] / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("modules_to_save"):
        raise ConfigError(
            f"ensemble=peft_merge: member {member.name}'s adapter {found[0].name} is not a plain LoRA adapter "
            "(DoRA or modules_to_save): merge the members' weights instead (ensemble=ties)"
        )
    return found[0]


class PeftMerge(WeightMerger):
    """Loads every member's LoRA adapter on the base model and combines them into one adapter; the merged weights
    are the base with it folded in."""

    name = "peft_merge"
    Config = PeftMergeConfig

    def __init__(self, config):
        super().__init__(config)
        self.adapter = None

    def validate(self, composition):
        if self.config.combination not in COMBINATIONS:
            raise ConfigError(
                f"{self.label}: combination={self.config.combination} is not one of {', '.join(COMBINATIONS)}"
            )
        check_density(self.label, self.config.density)
        check_majority_sign(self.label, self.config.majority_sign)
        if composition.task != "causal-lm":
            raise IncompatibleError(
                self.label,
                f"the {composition.task} task",
                "PEFT merges adapters without a head of their own: a classifier trains its head in full "
                "(merge the members' weights instead: ensemble=ties)",
            )
        super().validate(composition)

    def merge(self, members, base, context):
        import torch
        from peft import PeftModel, get_peft_model_state_dict

        model = base_model(context.members[0], base)
        names = [f"member{i}" for i in range(len(context.members))]
        adapters = [member_adapter(m) for m in context.members]
        model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
        for name, adapter in zip(names[1:], adapters[1:]):
            model.load_adapter(adapter, adapter_name=name)
        combination = self.config.combination
        trims = combination.startswith(("ties", "dare", "magnitude"))
        weights = [w * len(context.weights) for w in context.weights] if trims else list(context.weights)
        with torch.random.fork_rng(devices=[]):  # the dare_* drops, from trainer.seed
            torch.manual_seed(context.run.cfg.trainer.seed)
            model.add_weighted_adapter(
                names,
                weights,
                MERGED,
                combination_type=combination,
                svd_rank=self.config.svd_rank,
                density=self.config.density if trims else None,
                majority_sign_method=self.config.majority_sign,
            )
        model.set_adapter(MERGED)
        self.adapter = (model.peft_config[MERGED], get_peft_model_state_dict(model, adapter_name=MERGED))
        merged = model.merge_and_unload(adapter_names=[MERGED])
        return {key: value.float() for key, value in merged.state_dict().items()}

    def write_unmerged(self, directory):
        from safetensors.torch import save_file

        config, state = self.adapter
        target = directory / "adapters" / MERGED
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(target)
        save_file({key: value.contiguous() for key, value in state.items()}, target / "adapter_model.safetensors")


def base_model(member, base: dict):
    """A model of the member's class holding the base's weights (the stage's ``model.pretrained``)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(member.export, dtype=torch.float32)
    missing = sorted(set(model.state_dict()) - set(base))
    if missing:
        raise ConfigError(
            f"ensemble=peft_merge: the base model (model.pretrained) lacks {missing[0]} of member {member.name}: "
            "give the stage the members' base model"
        )
    model.load_state_dict(base)
    return model.eval()
