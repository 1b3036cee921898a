"""``trimmed_mean``: the coordinate-wise trimmed mean (Yin et al. 2018), Flower's ``FedTrimmedAvg``: for every
parameter, the ``beta`` fraction of the largest and of the smallest client values are dropped (int(beta * n) each)
and the rest averaged, unweighted."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.errors import ConfigError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.aggregators.byzantine import RobustAggregator


@dataclass
class TrimmedMeanConfig(TechniqueConfig):
    #: The fraction cut at each end, per coordinate (in [0, 0.5)).
    beta: float = 0.2


class TrimmedMean(RobustAggregator):
    """The coordinate-wise mean without the beta largest and beta smallest values."""

    name = "trimmed_mean"
    flower_class = "FedTrimmedAvg"
    Config = TrimmedMeanConfig

    def validate(self, composition):
        if not 0 <= self.config.beta < 0.5:
            raise ConfigError(f"aggregator.trimmed_mean.beta={self.config.beta} must be in [0, 0.5)")
        super().validate(composition)

    def options(self, context) -> dict:
        return {"beta": self.config.beta}
