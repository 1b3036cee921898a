"""The settings of one ``tessera serve`` / ``tessera predict``: the ``serve`` config group of the run (or its
defaults for a plain model directory) with the command line's ``KEY=VALUE`` overrides on top."""

from __future__ import annotations

from tessera.core.config import ServeConfig
from tessera.core.errors import ConfigError
from tessera.serving.target import attention_head_dim, model_config

#: Bytes of KV cache vLLM gets at least (its CPU default asks for most of the machine's memory).
MIN_KV_CACHE_BYTES = 64 * 2**20


def load_settings(run_cfg=None, overrides: list[str] = ()) -> ServeConfig:
    """``ServeConfig`` from the run's ``serve`` group (when serving a run) and ``overrides`` (``KEY=VALUE``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = OmegaConf.structured(ServeConfig)
    valid = ", ".join(sorted(merged.keys()))
    if run_cfg is not None and run_cfg.get("serve"):
        known = {key: value for key, value in run_cfg.serve.items() if key in merged}
        merged = OmegaConf.merge(merged, known)
    for override in overrides:
        key, equals, _ = override.removeprefix("serve.").partition("=")
        if not equals or key not in merged:
            raise ConfigError(f"unknown serve setting '{override}': write KEY=VALUE with KEY one of {valid}")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override.removeprefix("serve.")]))
        except OmegaConfBaseException as error:
            raise ConfigError(f"invalid value in '{override}': {str(error).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def dtype_for(settings: ServeConfig, kind: str, model_dir) -> str:
    """vLLM's ``--dtype``: the setting, or float32 for classifiers and bfloat16 for generation; bfloat16 for a
    checkpoint whose CPU kernel computes in bfloat16 only: 4-bit weights (W4A16), and W8A8 on a CPU with AMX
    (vLLM's AMX int8 kernel takes bfloat16 or float16 activations)."""
    bf16_only = (
        "4-bit (W4A16) weights, which vLLM's CPU kernel runs"
        if four_bit_weights(model_dir)
        else "W8A8 int8 weights, which vLLM's AMX int8 kernel on this CPU runs"
        if int8_activations(model_dir) and _amx()
        else None
    )
    if bf16_only:
        if settings.dtype in ("float32", "float"):
            raise ConfigError(
                f"{model_dir} holds {bf16_only} in bfloat16 only: drop dtype=float32 (or set dtype=bfloat16)"
            )
        return settings.dtype or "bfloat16"
    return settings.dtype or ("float32" if kind == "classify" else "bfloat16")


def _amx() -> bool:
    """Whether this CPU has AMX tiles (vLLM then runs W8A8 layers on its AMX int8 kernel)."""
    import torch

    return torch.cpu._is_amx_tile_supported()


def _quantization_groups(model_dir) -> list[dict]:
    groups = (model_config(model_dir).get("quantization_config") or {}).get("config_groups") or {}
    return list(groups.values())


def int8_activations(model_dir) -> bool:
    """Whether the checkpoint's ``quantization_config`` (compressed-tensors) quantizes activations to 8 bits
    (W8A8)."""
    return any((group.get("input_activations") or {}).get("num_bits") == 8 for group in _quantization_groups(model_dir))


def four_bit_weights(model_dir) -> bool:
    """Whether the checkpoint's ``quantization_config`` (compressed-tensors) quantizes weights to 4 bits."""
    return any((group.get("weights") or {}).get("num_bits") == 4 for group in _quantization_groups(model_dir))


def max_model_len(settings: ServeConfig, model_dir) -> int | None:
    """The context length to serve: the setting, else the model's own (``max_position_embeddings``)."""
    return settings.max_model_len or model_config(model_dir).get("max_position_embeddings")


def kv_cache_bytes(settings: ServeConfig, model_dir, dtype: str) -> int:
    """The KV cache to give vLLM: the setting, else room for two full-length sequences, at least 64 MiB."""
    if settings.kv_cache_memory_bytes:
        return settings.kv_cache_memory_bytes
    config = model_config(model_dir)
    kv_heads = config.get("num_key_value_heads") or config.get("num_attention_heads") or 1
    per_token = 2 * config.get("num_hidden_layers", 1) * kv_heads * (attention_head_dim(config) or 0)
    element = 4 if dtype in ("float32", "float") else 2
    return max(MIN_KV_CACHE_BYTES, 2 * per_token * element * (max_model_len(settings, model_dir) or 0))
