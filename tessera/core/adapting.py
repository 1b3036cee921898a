"""Applying a run's adapters to its model, by the stacking rule: each adapter makes trainable only the parameters
it owns, and the run trains the union of what they own.

An adapter that owns parameters (:attr:`~tessera.core.techniques.Adapter.owns_parameters`, the default: LoRA and
the other PEFT methods, BitFit) is handed the model with every parameter frozen, and what it marks trainable is what
it owns; parameters are tracked by identity, so a PEFT wrapper applied later keeps the base parameters an earlier
adapter owns. The adapters that own nothing are applied after them, in config order, to the union: the freezing
adapters (``freeze``, ``linear_probe``, ``gradual_unfreeze``) hold back parts of it, ``llrd`` only scales learning
rates. When no selected adapter owns parameters, the union is the whole model (full fine-tuning).
"""

from __future__ import annotations

from tessera.core.errors import PluginError


def apply_adapters(model, adapters, run):
    """``model`` with ``adapters`` applied by the stacking rule (owners in config order, then the others); returns
    the model to train, with exactly the union of the owners' parameters trainable before the others act."""
    owners = [adapter for adapter in adapters if adapter.owns_parameters]
    if owners:
        owned = {}
        for adapter in owners:
            model.requires_grad_(False)
            model = adapter.apply(model, run)
            owned.update((id(p), p) for p in model.parameters() if p.requires_grad)
        if not owned:
            raise PluginError(
                f"{', '.join(adapter.label for adapter in owners)} made no parameter trainable: an adapter sets "
                "requires_grad=True on what it owns, and one that only freezes sets owns_parameters = False"
            )
        for parameter in model.parameters():
            parameter.requires_grad = id(parameter) in owned
    for adapter in adapters:
        if not adapter.owns_parameters:
            model = adapter.apply(model, run)
    return model
