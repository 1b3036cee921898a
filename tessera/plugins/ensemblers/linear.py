"""``linear``: the weighted average of the members' parameters, a model soup (Wortsman et al., 2022)."""

from __future__ import annotations

from tessera.core.techniques import WeightMerger


class Linear(WeightMerger):
    """Averages every parameter of the members with the ensemble's weights (equal by default)."""

    name = "linear"

    def merge(self, members, base, context):
        return {key: sum(w * state[key] for w, state in zip(context.weights, members)) for key in members[0]}
