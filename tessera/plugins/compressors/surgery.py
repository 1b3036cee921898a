"""Model surgery shared by the compressors: removing whole layers of a transformers model so that its config
still describes it (transformers and vLLM reload the smaller model)."""

from __future__ import annotations

from tessera.core.errors import ConfigError


def layer_list(model):
    """The ``nn.ModuleList`` of the model's transformer layers (BERT's ``encoder.layer``, Llama's ``layers``)."""
    import torch

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and name.endswith(("layer", "layers")):
            return module
    raise ConfigError(f"cannot find the {count} transformer layers of {type(model).__name__}: choose another model")


def keep_layers(model, keep: list[int]):
    """Keep the layers at the positions ``keep`` (in that order) and drop the others; update the config (layer
    count, per-layer lists) and each attention layer's cache index. Returns ``model``, changed in place."""
    layers = layer_list(model)
    count = len(layers)
    if not keep or any(not 0 <= index < count for index in keep) or len(set(keep)) != len(keep):
        raise ConfigError(f"layers to keep {list(keep)} must be distinct positions in 0..{count - 1}")
    kept = [layers[index] for index in keep]
    del layers[:]  # nn.ModuleList has no slice assignment
    layers.extend(kept)
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    config = model.config
    config.num_hidden_layers = len(kept)
    for key in ("layer_types", "mlp_layer_types"):
        values = getattr(config, key, None)
        if isinstance(values, list) and len(values) == count:
            setattr(config, key, [values[index] for index in keep])
    return model


def spread(count: int, total: int) -> list[int]:
    """``count`` layer positions spread evenly over ``total`` layers from the first (DistilBERT's every other
    layer: ``spread(3, 6) == [0, 2, 4]``)."""
    if not 1 <= count <= total:
        raise ConfigError(f"cannot keep {count} of {total} layers: choose between 1 and {total}")
    if count == 1:
        return [0]
    step = total / count
    return [int(position * step) for position in range(count)]


def layer_linears(model) -> list[tuple[str, object]]:
    """``(qualified name, nn.Linear)`` of every linear layer inside the transformer layers: the weights that
    pruning acts on (embeddings, heads and norms stay dense)."""
    import torch

    layers = layer_list(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    return [
        (f"{prefix}.{name}", module) for name, module in layers.named_modules() if isinstance(module, torch.nn.Linear)
    ]


def check_fraction(label: str, key: str, value: float) -> None:
    """Refuse a sparsity or ratio outside [0, 1) in one line, before any work."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{label}: {key}={value} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5")
