"""``fedprox``: FedProx (Li et al. 2020), Flower's ``FedProx``: FedAvg's aggregate, with a proximal term
``mu / 2 * ||w - w_global||^2`` that each client adds to its loss at the trainer's loss seam (the strategy sends
``proximal-mu`` with every round)."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.core.techniques import Aggregator, TechniqueConfig


@dataclass
class FedProxConfig(TechniqueConfig):
    #: The weight of the proximal term (0 is FedAvg).
    proximal_mu: float = 0.01


class FedProx(Aggregator):
    """FedAvg with a proximal term in the clients' loss that keeps them near the global model."""

    name = "fedprox"
    Config = FedProxConfig

    def validate(self, composition):
        super().validate(composition)
        if self.config.proximal_mu < 0:
            raise ConfigError(f"aggregator.fedprox.proximal_mu={self.config.proximal_mu} must not be negative")

    def strategy(self, context):
        from flwr.serverapp.strategy import FedProx as Strategy

        return Strategy(**context.strategy_options, proximal_mu=self.config.proximal_mu)
