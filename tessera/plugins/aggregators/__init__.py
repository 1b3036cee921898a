"""Built-in aggregators, one module per method (FedAdam, FedYogi and FedAdagrad share ``fedopt``; the robust ones
share ``byzantine``): Flower's own strategies (``flwr.serverapp.strategy``) wrapped, and FLTrust, which Flower
lacks.

docs/federated.md has the methods, their parameters and what each needs.
"""

from tessera import hookimpl
from tessera.plugins.aggregators.bulyan import Bulyan
from tessera.plugins.aggregators.fedavg import FedAvg
from tessera.plugins.aggregators.fedavgm import FedAvgM
from tessera.plugins.aggregators.fedopt import FedAdagrad, FedAdam, FedYogi
from tessera.plugins.aggregators.fedprox import FedProx
from tessera.plugins.aggregators.fltrust import FLTrust
from tessera.plugins.aggregators.krum import Krum
from tessera.plugins.aggregators.median import Median
from tessera.plugins.aggregators.multikrum import MultiKrum
from tessera.plugins.aggregators.trimmed_mean import TrimmedMean

AGGREGATORS = [
    FedAvg,
    FedProx,
    FedAdam,
    FedYogi,
    FedAdagrad,
    FedAvgM,
    Krum,
    MultiKrum,
    Bulyan,
    TrimmedMean,
    Median,
    FLTrust,
]


@hookimpl
def tessera_aggregators():
    return AGGREGATORS
