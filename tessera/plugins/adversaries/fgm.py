"""``adversary=fgm``: Fast Gradient Method (Miyato, Dai & Goodfellow 2017).

One step of size ``epsilon`` along the L2-normalised gradient of the loss; the clean and the adversarial gradients
are summed. 2 forward/backward passes.
"""

from __future__ import annotations

from tessera.plugins.adversaries.base import EmbeddingAdversary, normalized, token_mask


class Fgm(EmbeddingAdversary):
    """Fast Gradient Method on the word embeddings (Miyato et al. 2017)."""

    name = "fgm"

    def backward(self, step, loss) -> None:
        self._embedding_hook(step)
        step.backward(loss)
        zero = self._zero(step)
        mask = token_mask(step.batch, zero)
        delta = self.config.epsilon * normalized(self._clean_gradient(step, zero), mask)
        self._adversarial_backward(step, delta)
