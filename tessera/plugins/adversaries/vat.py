"""``adversary=vat``: Virtual Adversarial Training (Miyato et al. 2017).

The KL divergence between the predictions on the clean and on a virtually adversarial input (found by
``power_iterations`` of power iteration from a random direction of size ``xi``) is added with ``weight``; it needs
no labels. 3 passes plus one forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.plugins.adversaries.base import EmbeddingAdversary, PerturbationConfig, normalized, token_mask


@dataclass
class VatConfig(PerturbationConfig):
    """Virtual adversarial training: the regulariser's weight and the power iteration."""

    weight: float = 1.0
    #: Size of the random probe of the power iteration.
    xi: float = 1e-3
    power_iterations: int = 1


class Vat(EmbeddingAdversary):
    """Virtual Adversarial Training (Miyato et al. 2017): a label-free smoothness term on the model's outputs."""

    name = "vat"
    Config = VatConfig

    def validate(self, composition) -> None:
        super().validate(composition)
        if self.config.power_iterations < 1 or self.config.xi <= 0:
            raise ConfigError("adversary.vat needs power_iterations >= 1 and xi > 0")

    @staticmethod
    def _logits(step):
        from tessera.core.batching import model_inputs

        return step.model(**model_inputs(step.batch)).logits.float()

    @staticmethod
    def _divergence(clean_logits, logits, mask):
        """KL(clean || perturbed) over the last axis, averaged over the examples (and their real tokens)."""
        import torch.nn.functional as F

        kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(clean_logits, -1), log_target=True, reduction="none")
        kl = kl.sum(-1)
        if kl.dim() == 2:  # token-level outputs: ignore padding
            weights = mask.squeeze(-1)
            return (kl * weights).sum() / weights.sum().clamp_min(1.0)
        return kl.mean()

    def backward(self, step, loss) -> None:
        import torch

        hook = self._embedding_hook(step)
        step.backward(loss)
        hook.recorded = []
        zero = self._zero(step)
        mask = token_mask(step.batch, zero)
        with torch.no_grad():
            clean = self._logits(step)
        direction = normalized(torch.randn_like(zero), mask)
        for _ in range(self.config.power_iterations):
            probe = (self.config.xi * direction).requires_grad_(True)
            with hook.perturbed(probe):
                divergence = self._divergence(clean, self._logits(step), mask)
            direction = normalized(torch.autograd.grad(divergence, probe)[0], mask)
        with hook.perturbed(self.config.epsilon * direction):
            regulariser = self._divergence(clean, self._logits(step), mask)
        step.backward(regulariser * self.config.weight * self.loss_scale)
