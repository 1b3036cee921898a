"""Base models and tokenizers from packaged assets or local Hugging Face directories (never from a hub)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from tessera.core.errors import ConfigError

log = logging.getLogger("tessera")

#: The task name of each set of heads a run's objectives train together.
TASKS = {
    frozenset({"sequence-classification"}): "sequence-classification",
    frozenset({"masked-lm"}): "masked-lm",
    frozenset({"next-sentence"}): "next-sentence",
    frozenset({"masked-lm", "next-sentence"}): "pretraining",
    frozenset({"causal-lm"}): "causal-lm",
}
#: The transformers Auto class of each task.
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "next-sentence": "AutoModelForNextSentencePrediction",
    "pretraining": "AutoModelForPreTraining",
    "causal-lm": "AutoModelForCausalLM",
}


def pretrained_path(model_cfg) -> Path:
    """The local directory ``model.pretrained`` names: ``asset:NAME``, ``registry:NAME@STAGE`` (a registered
    version's export, :mod:`tessera.registry`) or a path."""
    source = model_cfg.pretrained
    if source.startswith("registry:"):
        from tessera.registry.store import reference_export

        return reference_export(source)
    if source.startswith("asset:"):
        from tessera.core.assets import asset_path

        return asset_path(source.removeprefix("asset:"))
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.pretrained={source} is not a Hugging Face model directory (no config.json): "
            "point it at a saved model or use asset:minilm / asset:smollm2"
        )
    return path


def is_decoder(model_cfg) -> bool:
    """Whether the base model is decoder-only (its architecture has no masked-LM form, as Llama)."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = json.loads((pretrained_path(model_cfg) / "config.json").read_text())
    return config.get("model_type") not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def vocabulary(directory) -> tuple:
    """The tokenizer vocabulary of a model directory, comparable between two models (same tokenizer or not)."""
    from transformers import AutoTokenizer

    return tuple(sorted(AutoTokenizer.from_pretrained(directory).get_vocab().items()))


def load_tokenizer(model_cfg):
    """The tokenizer of the base model, with a padding token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_path(model_cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg, task: str, labels: list[str], tokenizer, seed: int):
    """The base model with the head ``task`` needs; random weights from the seed when ``model.random_init``."""
    import torch
    import transformers
    from transformers import AutoConfig

    path = pretrained_path(model_cfg)
    auto_class = getattr(transformers, AUTO_CLASSES[task])
    extra = {"pad_token_id": tokenizer.pad_token_id}
    if task == "sequence-classification":
        extra |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    torch.manual_seed(seed)
    if model_cfg.random_init:
        config = AutoConfig.from_pretrained(path, **dict(model_cfg.config_overrides), **extra)
        return auto_class.from_config(config)
    transformers.logging.set_verbosity_error()
    return auto_class.from_pretrained(path, dtype=torch.float32, **extra, **_new_head(path, task, labels))


def _new_head(path, task: str, labels: list[str]) -> dict:
    """``from_pretrained`` options for a checkpoint whose classification head has another number of labels than
    the run's (a transferred export, say): its encoder is kept and a new head is started, with a warning."""
    from transformers import AutoConfig

    if task != "sequence-classification":
        return {}
    saved = AutoConfig.from_pretrained(path)
    if saved.num_labels == len(labels):
        return {}
    if any(name.endswith("ForSequenceClassification") for name in saved.architectures or []):
        log.warning(
            "%s has a %d-label head and the data has %d labels (%s): its encoder is kept, the head starts anew",
            path,
            saved.num_labels,
            len(labels),
            ", ".join(labels),
        )
    return {"ignore_mismatched_sizes": True}


def module_names(model_cfg, task: str) -> dict[str, str]:
    """``{qualified module name: class name}`` of the model ``model_cfg`` describes, built on the meta device."""
    return _module_names(model_cfg.pretrained, tuple(sorted(dict(model_cfg.config_overrides).items())), task)


@functools.cache
def _module_names(pretrained: str, overrides: tuple, task: str) -> dict[str, str]:
    import torch
    import transformers
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.create({"pretrained": pretrained})
    config = transformers.AutoConfig.from_pretrained(pretrained_path(model_cfg), **dict(overrides))
    with torch.device("meta"):
        model = getattr(transformers, AUTO_CLASSES[task]).from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules()}
