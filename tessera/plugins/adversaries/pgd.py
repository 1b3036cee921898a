"""``adversary=pgd``: Projected Gradient Descent (Madry et al. 2018).

``steps`` ascent steps of size ``step_size``, each projected back into the L2 ball of radius ``epsilon``; the
intermediate steps only move the perturbation, the clean and the last adversarial gradients are summed.
``steps + 1`` passes.
"""

from __future__ import annotations

from tessera.plugins.adversaries.base import EmbeddingAdversary, MultiStepConfig, normalized, projected, token_mask


class Pgd(EmbeddingAdversary):
    """K-step projected gradient ascent on the word embeddings (Madry et al. 2018)."""

    name = "pgd"
    Config = MultiStepConfig

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        step.backward(loss)
        delta = self._zero(step)
        mask = token_mask(step.batch, delta)
        gradient = self._clean_gradient(step, delta)
        for ascent in range(self.config.steps):
            delta = projected(delta + self.config.step_size * normalized(gradient, mask), self.config.epsilon)
            if ascent + 1 < self.config.steps:
                gradient = self._gradient_at(step, delta)
        self._adversarial_backward(step, delta)
