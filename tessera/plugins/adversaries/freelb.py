"""``adversary=freelb``: FreeLB (Zhu et al. 2020).

``steps`` passes along the ascent path starting at the clean point (zero initialisation), each loss divided by
``steps`` and its gradient accumulated, so the parameters are trained on the average of all of them; projection
onto ``epsilon`` (0: unbounded). ``steps`` passes.
"""

from __future__ import annotations

from tessera.plugins.adversaries.base import EmbeddingAdversary, MultiStepConfig, normalized, projected, token_mask


class FreeLB(EmbeddingAdversary):
    """Free Large-Batch adversarial training (Zhu et al. 2020): gradients accumulated along the ascent path."""

    name = "freelb"
    Config = MultiStepConfig

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        share = 1.0 / self.config.steps
        step.backward(loss * share)
        delta = self._zero(step)
        mask = token_mask(step.batch, delta)
        gradient = self._clean_gradient(step, delta)
        for _ in range(self.config.steps - 1):
            delta = projected(delta + self.config.step_size * normalized(gradient, mask), self.config.epsilon)
            gradient = self._adversarial_backward(step, delta, share)
