"""Task vectors (Ilharco et al., 2023): what fine-tuning added to the base model (``member - base``), combined tensor
by tensor by PEFT's merge utilities (``peft.utils.merge_utils``) and added back to the base. Shared by
``task_arithmetic``, ``ties`` and ``dare``."""

from __future__ import annotations

from tessera.core.errors import ConfigError

#: How TIES elects the sign of each parameter: by the sum of the task vectors' values, or by counting their signs.
MAJORITY_SIGN_METHODS = ("total", "frequency")


def check_density(label: str, density: float) -> None:
    """Refuse a density outside (0, 1] in one line, before any work."""
    if not 0.0 < density <= 1.0:
        raise ConfigError(
            f"{label}: density={density} is outside (0, 1]: give the fraction of each task vector to keep"
        )


def check_majority_sign(label: str, method: str) -> None:
    """Refuse a sign election method PEFT does not have, in one line."""
    if method not in MAJORITY_SIGN_METHODS:
        raise ConfigError(f"{label}: majority_sign={method} is not one of {', '.join(MAJORITY_SIGN_METHODS)}")


def merge_task_vectors(members: list[dict], base: dict, weights: list[float], combine, scaling: float) -> dict:
    """``base + scaling * combine(task_vectors, weights)`` for every tensor the base has; a tensor the base lacks (a
    new classification head) is the weighted average of the members'.

    ``weights`` sum to 1 (the engine's); ``combine`` (a ``peft.utils.merge_utils`` function) receives them scaled to
    a mean of 1, the members' relative weights (equal weights: 1 each), so that task arithmetic adds the task
    vectors as in the paper and the disjoint merge of TIES is a mean of the agreeing values."""
    import torch

    relative = torch.tensor([w * len(weights) for w in weights])
    merged = {}
    for key in members[0]:
        if key in base:
            combined = combine([state[key] - base[key] for state in members], relative)
            merged[key] = base[key] + scaling * combined
        else:
            merged[key] = sum(w * state[key] for w, state in zip(weights, members))
    return merged
