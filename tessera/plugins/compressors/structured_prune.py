"""``structured_prune``: removes whole structures from the trained model so that it is smaller and faster in any
runtime, and its config still describes it (transformers and vLLM reload the export as a plain model):

- FFN neurons: the ``ffn_sparsity`` least important intermediate neurons of every layer (BERT: rows of
  ``intermediate.dense`` and columns of ``output.dense``; Llama: rows of ``gate_proj`` / ``up_proj`` and columns of
  ``down_proj``), the same count in every layer, ``intermediate_size`` set to it;
- whole layers: ``drop_layers`` (a count of top layers, or a list of positions);
- for Llama, key-value head groups: ``kv_heads`` groups kept per layer, each removed group's query heads with its
  key and value head and its ``o_proj`` columns; ``num_attention_heads`` / ``num_key_value_heads`` set and
  ``head_dim`` written explicitly. BERT's heads cannot be removed: its head size is derived from the hidden size.

Importance: ``magnitude`` (the L2 norm of a structure's weights) or ``taylor`` (first-order Taylor,
``sum |w * dL/dw|`` over the structure's weights, accumulated over the calibration sample with the run's
objectives' loss; Molchanov et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.core.compression import Compressed
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import Compressor, TechniqueConfig
from tessera.plugins.compressors.surgery import check_fraction, keep_layers, layer_list

IMPORTANCES = ("magnitude", "taylor")


@dataclass
class StructuredPruneConfig(TechniqueConfig):
    """What to remove and how the structures are ranked."""

    #: The fraction of each layer's FFN intermediate neurons to remove, in [0, 1).
    ffn_sparsity: float = 0.0
    #: Layers to remove: a count (the top layers, nearest the head: Sajjad et al. 2020's top-layer dropping) or a
    #: list of positions (``[1,3]``).
    drop_layers: Any = 0
    #: Llama: the key-value head groups to keep in every layer (null: all).
    kv_heads: Any = None
    #: ``magnitude`` or ``taylor`` (first-order, on the calibration sample).
    importance: str = "magnitude"
    #: Calibration items for ``taylor``.
    calibration_samples: int = 64


def base_config(model_cfg):
    """The transformers config of the run's model (with its ``config_overrides``), read without loading weights."""
    from transformers import AutoConfig

    from tessera.core.models import pretrained_path

    return AutoConfig.from_pretrained(pretrained_path(model_cfg), **dict(model_cfg.get("config_overrides") or {}))


def dropped_positions(drop_layers, count: int, label: str) -> list[int]:
    """The layer positions ``drop_layers`` names (a count of top layers or a list), refused in one line when it
    names a position that does not exist or every layer."""
    if isinstance(drop_layers, bool) or not isinstance(drop_layers, int):
        try:
            positions = sorted({int(position) for position in drop_layers})
        except (TypeError, ValueError):
            raise ConfigError(
                f"{label}: drop_layers={drop_layers} is neither a count nor a list of positions"
            ) from None
        if any(not 0 <= position < count for position in positions):
            raise ConfigError(f"{label}: drop_layers={drop_layers} names positions outside 0..{count - 1}")
    else:
        if drop_layers < 0:
            raise ConfigError(f"{label}: drop_layers={drop_layers} is negative: give a count or a list of positions")
        positions = list(range(max(0, count - drop_layers), count))
    if len(positions) >= count:
        raise ConfigError(f"{label}: drop_layers={drop_layers} removes all {count} layers: keep at least one")
    return positions


def ffn_of(layer) -> tuple[list[tuple[object, str]], list[tuple[object, str]]]:
    """The FFN of a transformer layer as ``(inputs, outputs)``: ``(parent, attribute)`` of the linears whose rows
    are the intermediate neurons, and of those whose columns are."""
    mlp = getattr(layer, "mlp", None)
    if mlp is not None and all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
        return [(mlp, "gate_proj"), (mlp, "up_proj")], [(mlp, "down_proj")]
    intermediate, output = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if intermediate is not None and output is not None and hasattr(intermediate, "dense"):
        return [(intermediate, "dense")], [(output, "dense")]
    raise ConfigError(f"structured_prune cannot find the FFN of a {type(layer).__name__}: BERT and Llama layers only")


def prune_linear(parent, attribute: str, keep, dim: int) -> None:
    """Replace ``parent.attribute`` (an ``nn.Linear``) by its rows (``dim=0``) or columns (``dim=1``) ``keep``."""
    from transformers.pytorch_utils import prune_linear_layer

    old = getattr(parent, attribute)
    new = prune_linear_layer(old, keep, dim=dim).to(old.weight.dtype)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    setattr(parent, attribute, new)


class StructuredPrune(Compressor):
    """Removes FFN neurons, whole layers and (Llama) key-value head groups, ranked by importance."""

    name = "structured_prune"
    Config = StructuredPruneConfig

    def validate(self, composition):
        config = self.config
        check_fraction(self.label, "ffn_sparsity", config.ffn_sparsity)
        if config.importance not in IMPORTANCES:
            raise ConfigError(f"{self.label}: importance={config.importance} is not one of {', '.join(IMPORTANCES)}")
        if config.calibration_samples < 1:
            raise ConfigError(f"{self.label}: calibration_samples={config.calibration_samples} must be at least 1")
        model = base_config(composition.cfg.model)
        dropped_positions(config.drop_layers, model.num_hidden_layers, self.label)
        if config.kv_heads is not None:
            if model.model_type != "llama":
                raise IncompatibleError(
                    self.label,
                    f"model={composition.cfg.model.name}",
                    f"kv_heads prunes Llama key-value head groups, and {model.model_type}'s attention heads cannot be "
                    "removed and reloaded (its head size is the hidden size / heads): prune ffn_sparsity or "
                    "drop_layers",
                )
            groups = model.num_key_value_heads or model.num_attention_heads
            if isinstance(config.kv_heads, bool) or not isinstance(config.kv_heads, int):
                raise ConfigError(f"{self.label}: kv_heads={config.kv_heads} is not a number of key-value heads")
            if not 1 <= config.kv_heads <= groups:
                raise ConfigError(
                    f"{self.label}: kv_heads={config.kv_heads} must be between 1 and the model's {groups} key-value "
                    "heads (the groups to keep)"
                )
        if config.ffn_sparsity and round(config.ffn_sparsity * model.intermediate_size) == 0:
            raise ConfigError(
                f"{self.label}: ffn_sparsity={config.ffn_sparsity} removes no neuron of {model.intermediate_size}"
            )

    def compress(self, model, context):
        config = self.config
        layers = layer_list(model)
        count = len(layers)
        scores = self._taylor_scores(model, context) if config.importance == "taylor" else None
        before = {
            "layers": count,
            "intermediate_size": model.config.intermediate_size,
            "attention_heads": model.config.num_attention_heads,
        }
        if config.ffn_sparsity:
            self._prune_ffn(model, scores)
        if config.kv_heads is not None and config.kv_heads < model.config.num_key_value_heads:
            self._prune_kv_groups(model, scores)
        dropped = dropped_positions(config.drop_layers, count, self.label)
        if dropped:
            keep_layers(model, [position for position in range(count) if position not in dropped])
        details = {
            "importance": config.importance,
            "layers_removed": dropped,
            "layers": [count, model.config.num_hidden_layers],
            "intermediate_size": [before["intermediate_size"], model.config.intermediate_size],
        }
        if model.config.model_type == "llama":
            details["attention_heads"] = [before["attention_heads"], model.config.num_attention_heads]
            details["kv_heads"] = model.config.num_key_value_heads
        return Compressed(model, details=details)

    # --- importance ------------------------------------------------------------------------------------------

    def _taylor_scores(self, model, context) -> dict:
        """``{weight tensor id: sum over the calibration batches of |w * dL/dw|}`` for the FFN and attention
        projections, with the run's objectives' weighted loss."""
        import torch

        from tessera.core.batching import model_inputs

        weights = [module.weight for module in layer_list(model).modules() if isinstance(module, torch.nn.Linear)]
        flags = [weight.requires_grad for weight in weights]
        objectives = context.run.composition.selected("objective")
        totals = {id(weight): torch.zeros_like(weight) for weight in weights}
        device = next(model.parameters()).device
        model.eval()
        try:
            for weight in weights:
                weight.requires_grad_(True)
            batches = context.calibration_batches(
                self.config.calibration_samples, context.run.cfg.trainer.eval_batch_size, device
            )
            for batch in batches:
                outputs = model(**model_inputs(batch))
                loss = sum(objective.config.weight * objective.loss(outputs, batch) for objective in objectives)
                gradients = torch.autograd.grad(loss, weights)
                for weight, gradient in zip(weights, gradients):
                    totals[id(weight)] += (weight.detach() * gradient).abs()
        finally:
            for weight, flag in zip(weights, flags):
                weight.requires_grad_(flag)
        return totals

    def _saliency(self, weight, scores):
        """The per-entry importance of ``weight``: |w * grad| accumulated (taylor), or w squared (magnitude)."""
        return scores[id(weight)] if scores is not None else weight.detach().float() ** 2

    # --- surgery ---------------------------------------------------------------------------------------------

    def _prune_ffn(self, model, scores) -> None:
        import torch

        size = model.config.intermediate_size
        kept = size - round(self.config.ffn_sparsity * size)
        for layer in layer_list(model):
            inputs, outputs = ffn_of(layer)
            importance = sum(self._saliency(getattr(p, a).weight, scores).sum(dim=1) for p, a in inputs)
            importance = importance + sum(self._saliency(getattr(p, a).weight, scores).sum(dim=0) for p, a in outputs)
            keep = torch.sort(torch.topk(importance, kept).indices).values
            for parent, attribute in inputs:
                prune_linear(parent, attribute, keep, dim=0)
            for parent, attribute in outputs:
                prune_linear(parent, attribute, keep, dim=1)
            mlp = inputs[0][0]
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = kept
        model.config.intermediate_size = kept

    def _prune_kv_groups(self, model, scores) -> None:
        """Keep the ``kv_heads`` most important key-value groups of each layer: a group is its key and value heads
        with the query heads that attend with them, and their ``o_proj`` columns."""
        import torch

        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        groups, per_group = config.num_key_value_heads, config.num_attention_heads // config.num_key_value_heads
        kept = self.config.kv_heads
        for layer in layer_list(model):
            attention = layer.self_attn

            def rows(weight, heads):
                return self._saliency(weight, scores).sum(dim=1).view(heads, head_dim).sum(dim=1)

            importance = rows(attention.k_proj.weight, groups) + rows(attention.v_proj.weight, groups)
            importance = importance + rows(attention.q_proj.weight, groups * per_group).view(groups, per_group).sum(1)
            columns = self._saliency(attention.o_proj.weight, scores).sum(dim=0).view(groups, per_group * head_dim)
            importance = importance + columns.sum(dim=1)
            keep = torch.sort(torch.topk(importance, kept).indices).values
            kv_index = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
            q_heads = (keep[:, None] * per_group + torch.arange(per_group)).flatten()
            q_index = (q_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
            prune_linear(attention, "k_proj", kv_index, dim=0)
            prune_linear(attention, "v_proj", kv_index, dim=0)
            prune_linear(attention, "q_proj", q_index, dim=0)
            prune_linear(attention, "o_proj", q_index, dim=1)
        config.head_dim = head_dim
        config.num_key_value_heads = kept
        config.num_attention_heads = kept * per_group
