"""The base of the adapters that stop parameters from training (``freeze``, ``linear_probe``,
``gradual_unfreeze``): they act on the parameters that are trainable when they are applied."""

from __future__ import annotations

from tessera.core.errors import IncompatibleError
from tessera.core.techniques import Adapter


class FreezingAdapter(Adapter):
    """Freezes some of the parameters that are trainable when it is applied.

    A PEFT adapter freezes the whole base model when it wraps it, so a freezing adapter listed before one would be
    undone; listed after (``adapter=[lora,freeze]``) it freezes among the PEFT adapter's own weights.
    """

    def validate(self, composition):
        from tessera.plugins.adapters.peft_base import PeftAdapter

        adapters = composition.selected("adapter")
        for later in adapters[adapters.index(self) + 1 :]:
            if isinstance(later, PeftAdapter):
                raise IncompatibleError(
                    self.label,
                    later.label,
                    f"{later.name} freezes the whole base model when it is applied, which undoes {self.name}: "
                    f"list {self.name} after it (adapter=[{later.name},{self.name}]) to act on its adapter weights",
                )

    @staticmethod
    def trainable(model) -> dict:
        """``{name: parameter}`` of the parameters of ``model`` that are trainable now."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
