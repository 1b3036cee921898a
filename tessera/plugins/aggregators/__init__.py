"""Built-in aggregators, one module per method (FedAdam, FedYogi and FedAdagrad share ``fedopt``): Flower's own
strategies (``flwr.serverapp.strategy``) wrapped, and FLTrust, which Flower lacks.

docs/federated.md has the methods, their parameters and what each needs.
"""

from tessera import hookimpl
from tessera.plugins.aggregators.fedavg import FedAvg
from tessera.plugins.aggregators.fedavgm import FedAvgM
from tessera.plugins.aggregators.fedopt import FedAdagrad, FedAdam, FedYogi
from tessera.plugins.aggregators.fedprox import FedProx

AGGREGATORS = [FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM]


@hookimpl
def tessera_aggregators():
    return AGGREGATORS
