"""``bulyan``: Bulyan (El Mhamdi et al. 2018), Flower's ``Bulyan``: Multi-Krum selects theta = n - 2f updates,
then each coordinate is the mean of the beta = theta - 2f selected values closest to their median. It needs
n >= 4f + 3 replies per round: the stage refuses fewer (Flower's strategy would skip the round)."""

from __future__ import annotations

from tessera.plugins.aggregators.byzantine import ByzantineAggregator


class Bulyan(ByzantineAggregator):
    """Multi-Krum selection, then a coordinate-wise trimmed mean around the median."""

    name = "bulyan"
    flower_class = "Bulyan"

    def minimum(self, f: int) -> int:
        return 4 * f + 3
