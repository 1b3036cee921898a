"""Byzantine clients for robustness experiments: ``federated.attack`` on a ``federated.attackers`` fraction of the
clients (at least one when positive, the same clients every round, drawn with ``trainer.seed``).

An attacker trains like an honest client, then sends a corrupted update instead of its trained parameters
(:attr:`tessera.federated.client.LocalTraining.corrupt`); with w the round's global parameters and t the attacker's
trained ones:

- ``sign_flip``: ``w - 4 (t - w)``, the update reversed and scaled by 4 (the sign-flipping attack with
  coefficient -4 of Li et al. 2019, RSA; enough that 20% of attackers cancel FedAvg's mean update).
- ``gaussian``: ``w + N(0, 200^2)`` per parameter, the attacker's training discarded (Blanchard et al. 2017's
  Gaussian Byzantine workers, sigma 200).
- ``label_flip``: no corruption of what is sent; the attacker trains on flipped labels, class ``c`` of ``C``
  becoming ``C - 1 - c`` (Tolpegin et al. 2020). It needs integer example labels (a classification objective).
- ``alie``: "A little is enough" (Baruch et al. 2019): every attacker sends ``w + mu - z sigma``, with mu and
  sigma the per-coordinate mean and standard deviation of all the attackers' honest updates of the round, and
  ``z = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - f`` for n clients and f attackers. In process the
  clients of a round run one after another: the first attacker of a round trains the other attackers' partitions
  from the round's global model too (once; cached by server round), so that all attackers send the same vector.
"""

from __future__ import annotations

import logging
import math
import random
from numbers import Integral
from statistics import NormalDist

from tessera.core.errors import ConfigError

log = logging.getLogger("tessera")
ATTACKS = ("none", "sign_flip", "gaussian", "label_flip", "alie")
#: ``sign_flip`` sends ``w - SIGN_FLIP_SCALE * (t - w)``.
SIGN_FLIP_SCALE = 4.0
#: ``gaussian`` sends ``w + N(0, GAUSSIAN_SIGMA^2)``.
GAUSSIAN_SIGMA = 200.0


def attacker_count(cfg) -> int:
    """How many of the clients attack: ``federated.attackers`` of them rounded half up, at least one when
    positive."""
    fraction = cfg.federated.attackers
    return 0 if fraction <= 0 else max(1, math.floor(fraction * cfg.federated.clients + 0.5))


def attackers(cfg) -> list[int]:
    """The partition ids of the attacking clients (the same every round, drawn with ``trainer.seed``)."""
    count = attacker_count(cfg)
    return sorted(random.Random(cfg.trainer.seed * 7_919 + 17).sample(range(cfg.federated.clients), count))


def alie_z(clients: int, attackers: int) -> float:
    """Baruch et al. 2019's z for n clients and f attackers: ``Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``."""
    s = math.floor(clients / 2 + 1) - attackers
    return NormalDist().inv_cdf((clients - s) / clients)


def validate_attack(cfg) -> None:
    """Refuse an attack that cannot run (one line each)."""
    federated = cfg.federated
    attack, fraction = federated.attack, federated.attackers
    if attack not in ATTACKS:
        raise ConfigError(f"federated.attack={attack} is not one of {', '.join(ATTACKS)}")
    if not 0 <= fraction < 1:
        raise ConfigError(f"federated.attackers={fraction} must be in [0, 1) (the fraction of clients that attack)")
    if attack == "none" and fraction > 0:
        raise ConfigError(
            f"federated.attackers={fraction} without an attack: set federated.attack to one of "
            f"{', '.join(ATTACKS[1:])}, or federated.attackers=0"
        )
    if attack != "none" and fraction == 0:
        raise ConfigError(
            f"federated.attack={attack} needs attacking clients: set federated.attackers (the fraction, e.g. 0.2)"
        )
    count = attacker_count(cfg)
    if count >= federated.clients:
        raise ConfigError(
            f"federated.attackers={fraction} makes all {federated.clients} clients attackers: lower it or add clients"
        )
    if attack == "alie":
        if count < 2:
            raise ConfigError(
                f"federated.attack=alie needs at least 2 attackers (the mean and deviation of their updates), but "
                f"federated.attackers={fraction} of {federated.clients} clients is {count}: raise either"
            )
        if math.floor(federated.clients / 2 + 1) - count < 1:
            raise ConfigError(
                f"federated.attack=alie is defined for a minority of attackers; {count} of {federated.clients} is "
                "not: lower federated.attackers"
            )


def install(local) -> None:
    """Make the clients of ``local`` (a :class:`~tessera.federated.client.LocalTraining`) that
    :func:`attackers` chooses attack as ``federated.attack`` says; sets ``local.attackers``."""
    cfg = local.run.cfg
    attack = cfg.federated.attack
    if attack == "none":
        return
    chosen = attackers(cfg)
    local.attackers = chosen
    log.info("federated.attack=%s: clients %s attack", attack, ", ".join(map(str, chosen)))
    if attack == "label_flip":
        flip_labels(local, chosen)
    else:
        local.corrupt = Corruption(attack, chosen, local)


def flip_labels(local, chosen: list[int]) -> None:
    """Replace the label ``c`` of every training item of the ``chosen`` partitions by ``C - 1 - c``."""
    classes = getattr(local.model.config, "num_labels", None)
    for partition in chosen:
        items = local.partitions[partition]
        if not classes or any(not isinstance(item.get("labels"), Integral) for item in items):
            raise ConfigError(
                "federated.attack=label_flip needs examples with one class label each (a classification "
                "objective); choose another attack"
            )
        local.partitions[partition] = [{**item, "labels": classes - 1 - int(item["labels"])} for item in items]


class Corruption:
    """``LocalTraining.corrupt`` of the update-corrupting attacks: ``(partition, global, trained, config)`` ->
    what the client sends (its trained arrays unchanged unless ``partition`` attacks)."""

    def __init__(self, attack: str, chosen: list[int], local):
        self.attack, self.chosen, self.local = attack, set(chosen), local
        cfg = local.run.cfg
        self.seed = cfg.trainer.seed
        self.z = alie_z(cfg.federated.clients, len(chosen)) if attack == "alie" else 0.0
        self._round: int | None = None
        self._honest: dict[int, dict] = {}
        self._malicious: dict | None = None

    def __call__(self, partition: int, global_arrays: dict, trained: dict, config: dict) -> dict:
        if partition not in self.chosen:
            return trained
        if self.attack == "sign_flip":
            return {n: g - SIGN_FLIP_SCALE * (trained[n] - g) for n, g in global_arrays.items()}
        if self.attack == "gaussian":
            import torch

            server_round = int(config.get("server-round", 0))
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + server_round * 10_007 + partition)
            return {
                n: g + GAUSSIAN_SIGMA * torch.randn(g.shape, generator=generator, dtype=g.dtype)
                for n, g in global_arrays.items()
            }
        return self._alie(partition, global_arrays, trained, config)

    def _alie(self, partition: int, global_arrays: dict, trained: dict, config: dict) -> dict:
        """``w + mu - z sigma`` over all the attackers' honest updates of this round (computed once per round)."""
        import torch

        server_round = int(config.get("server-round", 0))
        if self._round != server_round:
            self._round, self._honest, self._malicious = server_round, {}, None
        self._honest[partition] = {n: trained[n] - g for n, g in global_arrays.items()}
        if self._malicious is None:
            for other in sorted(self.chosen - self._honest.keys()):
                honest, _ = self.local.train(other, global_arrays, config, honest=True)
                self._honest[other] = {n: honest[n] - g for n, g in global_arrays.items()}
            updates = list(self._honest.values())
            self._malicious = {}
            for n in global_arrays:
                stacked = torch.stack([update[n] for update in updates])
                mean, std = stacked.mean(dim=0), stacked.std(dim=0, unbiased=False)
                self._malicious[n] = mean - self.z * std
        return {n: g + self._malicious[n] for n, g in global_arrays.items()}
