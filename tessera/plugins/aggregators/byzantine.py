"""What the Byzantine-robust aggregators share: each wraps one of Flower's own Message-API strategies
(``flwr.serverapp.strategy``), needs every client's individual update (``sum_only = False``: secure aggregation,
which hides them, refuses these), and those that tolerate ``f`` malicious clients (Krum, MultiKrum, Bulyan) take
``num_malicious`` and refuse, before any work, a federation whose rounds can aggregate fewer clients than their
guarantee needs (:meth:`ByzantineAggregator.minimum`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tessera.core.errors import ConfigError
from tessera.core.techniques import Aggregator, TechniqueConfig


class RobustAggregator(Aggregator):
    """An aggregator that is one Flower strategy (``flower_class``) built with the federation's sampling options
    and :meth:`options`."""

    sum_only = False
    flower_class: ClassVar[str]

    def options(self, context) -> dict:
        """The Flower strategy's own parameters (beyond the sampling options)."""
        return {}

    def strategy(self, context):
        from flwr.serverapp import strategy

        return getattr(strategy, self.flower_class)(**context.strategy_options, **self.options(context))


@dataclass
class MaliciousConfig(TechniqueConfig):
    #: f: the malicious clients per round the aggregate tolerates (Flower's ``num_malicious_nodes``).
    num_malicious: int = 1


class ByzantineAggregator(RobustAggregator):
    """A robust aggregator tolerating ``num_malicious`` (f) Byzantine clients among the n that answer a round."""

    Config = MaliciousConfig

    def minimum(self, f: int) -> int:
        """The fewest replies per round the method's guarantee needs with f malicious clients."""
        raise NotImplementedError

    def min_clients(self) -> int:
        return self.minimum(self.config.num_malicious)

    def validate(self, composition):
        from tessera.federated.stage import required_answers

        f = self.config.num_malicious
        if f < 0:
            raise ConfigError(f"aggregator.{self.name}.num_malicious={f} must not be negative")
        super().validate(composition)
        needed = required_answers(composition.cfg)
        if needed < self.min_clients():
            raise ConfigError(
                f"{self.label} needs at least {self.min_clients()} replies per round with num_malicious={f}, but "
                f"federated.min_clients={needed} lets a round aggregate fewer: raise federated.min_clients"
            )

    def options(self, context) -> dict:
        return {"num_malicious_nodes": self.config.num_malicious}
