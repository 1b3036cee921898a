"""``median``: the coordinate-wise median (Yin et al. 2018), Flower's ``FedMedian``: every parameter of the new
global model is the median of the clients' values, unweighted."""

from __future__ import annotations

from tessera.plugins.aggregators.byzantine import RobustAggregator


class Median(RobustAggregator):
    """The coordinate-wise median of the clients' parameters."""

    name = "median"
    flower_class = "FedMedian"
