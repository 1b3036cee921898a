"""Where a parameter sits in a transformer, read from its name: the depth that freezing, gradual unfreezing,
linear probing and layer-wise learning-rate decay act on.

Depth 0 is the embeddings, depth ``i`` (1..L) the ``i``-th transformer layer from the bottom, and depth ``L + 1``
everything above the layers: the pooler, the final norm, the task head, prompt encoders. The names of BERT-like
(``bert.encoder.layer.3.``), Llama-like (``model.layers.3.``), GPT-2-like (``transformer.h.3.``) and T5-like
(``block.3.``) models are understood, also inside a PEFT wrapper (``base_model.model.bert.encoder.layer.3.``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|embed_positions|word_embeddings|wte|wpe)(?:\.|$)")

#: The heads transformers adds for sequence classification: ``classifier`` (BERT-like) and ``score`` (Llama-like).
HEAD_MODULES = ("classifier", "score")


def layer_index(name: str) -> int | None:
    """The 0-based index of the transformer layer that holds ``name``, or None outside the numbered layers."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def layer_count(names: Iterable[str]) -> int:
    """The number of transformer layers among parameter or module ``names`` (0 when none is numbered)."""
    return max((index + 1 for index in map(layer_index, names) if index is not None), default=0)


def depth(name: str, layers: int) -> int:
    """The depth of ``name`` in a model of ``layers`` layers: 0 embeddings, 1..layers, ``layers + 1`` the top."""
    index = layer_index(name)
    if index is not None:
        return index + 1
    return 0 if _EMBEDDINGS.search(name) else layers + 1


def is_within(name: str, modules: Iterable[str]) -> bool:
    """Whether ``name`` lies in a module named by one of ``modules`` (a dotted suffix such as ``classifier``
    or ``cls.predictions``) anywhere in the model's tree."""
    dotted = f".{name}."
    return any(f".{module}." in dotted for module in modules)


def model_layer_count(composition) -> int:
    """The number of transformer layers of the run's model, from its module names (built on the meta device)."""
    from tessera.core.models import module_names

    return layer_count(module_names(composition.cfg.model, composition.task))


def require_layers(technique, composition) -> int:
    """The run's layer count; an ``IncompatibleError`` naming ``technique`` and the model when none is found."""
    from tessera.core.errors import IncompatibleError

    layers = model_layer_count(composition)
    if not layers:
        raise IncompatibleError(
            technique.label,
            f"model={composition.cfg.model.name}",
            "its parameter names show no numbered transformer layers (layer.N, layers.N, h.N, block.N)",
        )
    return layers
