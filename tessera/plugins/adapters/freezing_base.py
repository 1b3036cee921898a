"""The base of the adapters that stop parameters from training (``freeze``, ``linear_probe``,
``gradual_unfreeze``): they own no parameters and act on the union of those the other adapters own."""

from __future__ import annotations

from tessera.core.techniques import Adapter


class FreezingAdapter(Adapter):
    """Freezes some of the parameters the run would otherwise train.

    It owns nothing (:attr:`owns_parameters` is False): :func:`~tessera.core.adapting.apply_adapters` applies it
    after the adapters that own parameters, wherever it is listed, so ``adapter=[freeze,lora]`` and
    ``adapter=[lora,freeze]`` both freeze among LoRA's weights and the head; alone, it freezes among the whole model.
    """

    owns_parameters = False

    @staticmethod
    def trainable(model) -> dict:
        """``{name: parameter}`` of the parameters of ``model`` that are trainable now."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
