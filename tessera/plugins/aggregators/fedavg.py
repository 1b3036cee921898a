"""``fedavg``: Federated Averaging (McMahan et al. 2017), Flower's ``FedAvg``: the mean of the clients' parameters
weighted by their example counts."""

from __future__ import annotations

from tessera.core.techniques import Aggregator


class FedAvg(Aggregator):
    """The example-weighted mean of the clients' trainable parameters."""

    name = "fedavg"

    def strategy(self, context):
        from flwr.serverapp.strategy import FedAvg as Strategy

        return Strategy(**context.strategy_options)
