"""``vote``: a hard majority vote of the members' predicted classes (the argmax of each member's probabilities)."""

from __future__ import annotations

from tessera.core.techniques import OutputCombiner


class Vote(OutputCombiner):
    """Each member votes for its most probable class with its weight (equal by default); the class with the most
    vote weight wins, a tie going to the tied class with the largest weighted sum of probabilities.

    The ensemble's "probabilities" are the vote shares (each class's share of the vote weight, summing to 1), with
    the tie-break added as a margin far below one vote, so that their argmax is the winning class: log loss and
    ROC curves then measure the vote's confidence rather than a one-hot certainty.
    """

    name = "vote"
    #: The weighted mean probabilities scaled by this are added to the vote shares: they only break ties.
    TIE_BREAK = 1e-6

    def combine(self, probabilities, weights):
        import numpy as np

        probabilities = [np.asarray(p, dtype=np.float64) for p in probabilities]
        classes = probabilities[0].shape[1]
        shares = sum(w * np.eye(classes)[p.argmax(axis=1)] for w, p in zip(weights, probabilities)) / sum(weights)
        soft = sum(w * p for w, p in zip(weights, probabilities)) / sum(weights)
        leaders = np.isclose(shares, shares.max(axis=1, keepdims=True), rtol=0, atol=1e-9)
        shares = shares + self.TIE_BREAK * np.where(leaders, soft, 0.0)
        return shares / shares.sum(axis=1, keepdims=True)
