"""``multikrum``: Multi-Krum (El Mhamdi et al. 2018), Flower's ``MultiKrum``: the ``num_to_select`` (m) client
updates with the best Krum scores, averaged weighted by their example counts. ``num_to_select: null`` takes
m = n - f of the clients a round samples (the paper's choice); m = 1 is Krum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tessera.core.errors import ConfigError
from tessera.plugins.aggregators.byzantine import ByzantineAggregator, MaliciousConfig


@dataclass
class MultiKrumConfig(MaliciousConfig):
    #: m: the updates averaged; null: n - f of the clients a round samples.
    num_to_select: Optional[int] = None


class MultiKrum(ByzantineAggregator):
    """The mean of the m client updates with the best Krum scores."""

    name = "multikrum"
    flower_class = "MultiKrum"
    Config = MultiKrumConfig

    def minimum(self, f: int) -> int:
        m = self.config.num_to_select
        return max(2 * f + 3, f + (m or 1))

    def validate(self, composition):
        m = self.config.num_to_select
        if m is not None and m < 1:
            raise ConfigError(f"aggregator.multikrum.num_to_select={m} must be at least 1 (or null: n - f)")
        super().validate(composition)

    def options(self, context) -> dict:
        f, m = self.config.num_malicious, self.config.num_to_select
        return {**super().options(context), "num_nodes_to_select": m or context.per_round - f}
