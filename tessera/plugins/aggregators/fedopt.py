"""The server optimisers of Reddi et al. 2021 (``fedadam``, ``fedyogi``, ``fedadagrad``), Flower's ``FedAdam``,
``FedYogi`` and ``FedAdagrad``: the mean update is a pseudo-gradient that a server-side adaptive optimiser
applies with learning rate ``eta``. One module for the three: they share their parameters and differ only in the
Flower class (and FedAdagrad has no betas)."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.techniques import Aggregator, TechniqueConfig


@dataclass
class FedOptConfig(TechniqueConfig):
    #: The server-side learning rate.
    eta: float = 0.01
    #: The client-side learning rate Flower records (tessera's clients train with trainer.learning_rate).
    eta_l: float = 0.0316
    beta_1: float = 0.9
    beta_2: float = 0.99
    #: The adaptivity (the optimiser's epsilon).
    tau: float = 0.001


class _FedOpt(Aggregator):
    Config = FedOptConfig
    flower_class: str

    def options(self) -> dict:
        c = self.config
        return {"eta": c.eta, "eta_l": c.eta_l, "beta_1": c.beta_1, "beta_2": c.beta_2, "tau": c.tau}

    def strategy(self, context):
        from flwr.serverapp import strategy

        return getattr(strategy, self.flower_class)(**context.strategy_options, **self.options())


class FedAdam(_FedOpt):
    """Adam on the server over the clients' mean update."""

    name = "fedadam"
    flower_class = "FedAdam"


class FedYogi(_FedOpt):
    """Yogi on the server over the clients' mean update."""

    name = "fedyogi"
    flower_class = "FedYogi"


class FedAdagrad(_FedOpt):
    """Adagrad on the server over the clients' mean update (``beta_1`` and ``beta_2`` are not used)."""

    name = "fedadagrad"
    flower_class = "FedAdagrad"

    def options(self) -> dict:
        c = self.config
        return {"eta": c.eta, "eta_l": c.eta_l, "tau": c.tau}
