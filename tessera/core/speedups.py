"""Training-time replacements that compute the same thing faster (each a ``trainer.*`` key, docs/config.md).

* ``trainer.fast_dropout`` (CPU only): torch's CPU Bernoulli kernel draws one 32-bit random number per element
  under a lock, and on this machine's CPU it was the largest single cost of a LoRA step (37 % of the CPU time with
  PEFT's dropout on every adapter input). :class:`FastDropout` slices each 64-bit draw into four 16-bit numbers
  and keeps an element when its number is at least ``p`` of the way up the range: the same Bernoulli mask (drop
  probability rounded to 1/65536) from a quarter of the draws, scaled by ``1 / (1 - p)`` as ``nn.Dropout`` does,
  from torch's default generator (so ``trainer.seed`` still decides it). CUDA's dropout is already fast: the key
  does nothing there.
* ``trainer.fused_lora``: a PEFT LoRA linear layer computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` in
  PEFT's forward, which under bf16 autocast casts ``x`` to fp32 and back for the adapter and spends a separate
  multiply and add on the full output. :func:`fused_lora_forward` computes the same sum with one ``addmm`` (the
  scaling as its ``alpha``) on an input cast once, for layers with one active, plain LoRA adapter (no DoRA, no
  adapter bias, not merged); other layers keep PEFT's forward.

:func:`training_speedups` applies the selected ones to a model for the length of the training and undoes them.
"""

from __future__ import annotations

import contextlib
import types

#: Elements per 64-bit draw in :class:`FastDropout`.
_SLICES = 4


def _dropout_class():
    import torch

    class FastDropout(torch.nn.Dropout):
        """``nn.Dropout`` with masks from 16-bit slices of 64-bit random draws (see the module's docstring)."""

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            if self.p >= 1:
                return x * 0
            count = x.numel()
            draws = torch.empty((count + _SLICES - 1) // _SLICES, dtype=torch.int64, device=x.device)
            bits = draws.random_(-(2**63), None).view(torch.int16)[:count].view(x.shape)
            keep = bits >= round(self.p * 65536) - 32768
            return x * (keep.to(x.dtype) * (1 / (1 - self.p)))

    return FastDropout


def fast_dropout(model):
    """Swap every ``nn.Dropout`` of ``model`` for :class:`FastDropout` (same module, same ``p``); return a function
    that swaps them back."""
    import torch

    fast = _dropout_class()
    swapped = [module for module in model.modules() if type(module) is torch.nn.Dropout]
    for module in swapped:
        module.__class__ = fast

    def undo() -> None:
        for module in swapped:
            module.__class__ = torch.nn.Dropout

    return undo


def _plain_lora(layer) -> str | None:
    """The one active adapter of a PEFT LoRA ``layer`` when the fused forward computes what PEFT's does, else None."""
    active = list(layer.active_adapters)
    if len(active) != 1 or layer.merged or layer.disable_adapters:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    if layer.lora_B[name].bias is not None or getattr(layer, "fan_in_fan_out", False):
        return None
    return name


def fused_lora_forward(self, x, *args, **kwargs):
    """PEFT LoRA ``Linear.forward`` as one ``addmm``: ``base(x) + scaling * (dropout(x) @ A^T) @ B^T``."""
    import torch

    name = _plain_lora(self) if not (args or kwargs) else None
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        x = x.to(torch.get_autocast_dtype(device))  # one cast, shared by the frozen layer and the adapter
    result = self.base_layer(x)
    low_rank = torch.nn.functional.linear(self.lora_dropout[name](x), self.lora_A[name].weight)
    width = result.shape[-1]
    fused = torch.addmm(
        result.reshape(-1, width),
        low_rank.reshape(-1, low_rank.shape[-1]),
        self.lora_B[name].weight.t(),
        alpha=self.scaling[name],
    )
    return fused.view(result.shape)


def fused_lora(model):
    """Give every PEFT LoRA linear layer of ``model`` :func:`fused_lora_forward`; return a function that restores
    PEFT's forward."""
    import sys

    if "peft" not in sys.modules:  # a model with PEFT layers has imported peft; importing it here costs seconds
        return lambda: None
    from peft.tuners.lora.layer import Linear

    layers = [module for module in model.modules() if isinstance(module, Linear)]
    for layer in layers:
        layer.forward = types.MethodType(fused_lora_forward, layer)

    def undo() -> None:
        for layer in layers:
            layer.__dict__.pop("forward", None)

    return undo


@contextlib.contextmanager
def training_speedups(model, trainer_cfg, device: str):
    """Apply the speed-ups that ``trainer_cfg`` selects to ``model`` while the block runs (training), then undo them:
    the model that leaves the block is the plain transformers / PEFT model."""
    undo = []
    try:
        if trainer_cfg.fast_dropout and device == "cpu":
            undo.append(fast_dropout(model))
        if trainer_cfg.fused_lora:
            undo.append(fused_lora(model))
        yield
    finally:
        for step in reversed(undo):
            step()
