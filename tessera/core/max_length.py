"""``data.max_length``: a number of tokens, or ``auto`` (the default), the 95th percentile of the training split's
token lengths (the model's tokenizer, special tokens included) capped at the model's limit.

``auto`` is resolved once per run, before augmentation and knowledge injection, into the run's config and its
saved copy (``.hydra/config.yaml``, or a stage's ``config.yaml``), so that evaluation, ``tessera serve``, attacks
and ``resume=true`` all see the number.
"""

from __future__ import annotations

import logging
import math

from tessera.core.errors import ConfigError

log = logging.getLogger("tessera")
AUTO = "auto"
PERCENTILE = 95
#: The most training texts measured (the first ones of the shuffled split).
MEASURED_TEXTS = 10_000
#: Saved copies of the run's config, relative to its directory: a run's (Hydra's) and a stage's.
SAVED_CONFIGS = (".hydra/config.yaml", "config.yaml")


def check_max_length(value) -> None:
    """Refuse a ``data.max_length`` that is neither ``auto`` nor a positive number of tokens."""
    if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"data.max_length={value} must be a positive number of tokens or auto")


def model_limit(model_cfg, tokenizer) -> int | None:
    """The most tokens the model takes: the smaller of ``tokenizer.model_max_length`` and the model config's
    ``max_position_embeddings``, ignoring either where it is unset (``None``: no limit known)."""
    from transformers import AutoConfig
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    from tessera.core.models import pretrained_path

    config = AutoConfig.from_pretrained(pretrained_path(model_cfg), **dict(model_cfg.config_overrides))
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    real = [limit for limit in limits if isinstance(limit, int) and 0 < limit < VERY_LARGE_INTEGER]
    return min(real, default=None)


def percentile_length(tokenizer, texts: list[str], percentile: int = PERCENTILE) -> int:
    """The ``percentile``-th percentile (nearest rank) of the token lengths of ``texts``, special tokens included."""
    lengths = sorted(map(len, tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]))
    return lengths[max(0, math.ceil(len(lengths) * percentile / 100) - 1)]


def resolve_max_length(run, train: list[dict]) -> int:
    """``data.max_length`` of ``run`` as a number: ``auto`` is chosen from the ``train`` examples, logged, and
    written into the run's config and its saved copies; a number is returned as it is."""
    from omegaconf import OmegaConf

    from tessera.core.models import load_tokenizer

    cfg = run.cfg
    if cfg.data.max_length != AUTO:
        return cfg.data.max_length
    tokenizer = load_tokenizer(cfg.model)
    texts = [example["text"] for example in train[:MEASURED_TEXTS]]
    found, limit = percentile_length(tokenizer, texts), model_limit(cfg.model, tokenizer)
    chosen = found if limit is None else min(found, limit)
    capped = f", capped from {found}" if chosen < found else ""
    log.info(
        "max_length auto: %d tokens (%dth percentile of %d training texts%s, model limit %s)",
        chosen,
        PERCENTILE,
        len(texts),
        capped,
        limit or "unknown",
    )
    cfg.data.max_length = chosen
    for relative in SAVED_CONFIGS:
        saved = run.dir / relative
        if saved.is_file():
            copy = OmegaConf.load(saved)
            if OmegaConf.select(copy, "data.max_length") == AUTO:
                copy.data.max_length = chosen
                OmegaConf.save(copy, saved)
    return chosen
