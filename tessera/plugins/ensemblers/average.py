"""``average``: the weighted mean of the members' class probabilities (soft voting)."""

from __future__ import annotations

from tessera.core.techniques import OutputCombiner


class Average(OutputCombiner):
    """Averages the members' class probabilities with the ensemble's weights (equal by default)."""

    name = "average"

    def combine(self, probabilities, weights):
        return sum(w * p for w, p in zip(weights, probabilities))
