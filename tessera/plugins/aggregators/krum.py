"""``krum``: Krum (Blanchard et al. 2017), Flower's ``Krum``: the one client update whose n - f - 2 nearest
neighbours (squared L2 distance over all trainable parameters) are closest becomes the new global model. The
guarantee needs n > 2f + 2 clients per round, which the stage enforces."""

from __future__ import annotations

from tessera.plugins.aggregators.byzantine import ByzantineAggregator


class Krum(ByzantineAggregator):
    """The single client update closest to its n - f - 2 nearest neighbours."""

    name = "krum"
    flower_class = "Krum"

    def minimum(self, f: int) -> int:
        return 2 * f + 3
