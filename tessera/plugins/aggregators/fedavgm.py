"""``fedavgm``: FedAvg with server momentum (Hsu et al. 2019), Flower's ``FedAvgM``."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.techniques import Aggregator, TechniqueConfig


@dataclass
class FedAvgMConfig(TechniqueConfig):
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9


class FedAvgM(Aggregator):
    """The mean update applied with momentum on the server."""

    name = "fedavgm"
    Config = FedAvgMConfig

    def strategy(self, context):
        from flwr.serverapp.strategy import FedAvgM as Strategy

        c = self.config
        return Strategy(
            **context.strategy_options, server_learning_rate=c.server_learning_rate, server_momentum=c.server_momentum
        )
