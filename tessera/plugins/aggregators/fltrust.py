"""``fltrust``: FLTrust (Cao et al. 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping"), which Flower lacks: the server holds a small clean root set and bootstraps its trust from it.

Every round the server trains the current global model w on its root set for one local round (the clients' local
round settings) and takes its update g0 = w_root - w. Each client's update gi = w_i - w gets the trust score
TS_i = ReLU(cos(gi, g0)) (the cosine over the concatenation of all trainable tensors), is rescaled to the length of
g0, and the new global model is w + sum_i TS_i * gi * ||g0|| / ||gi|| / sum_i TS_i. When every score is 0 the
global model is kept (logged). The root set is a seeded sample of ``root_examples`` training examples that the
stage keeps out of the clients' partitions (the paper's server dataset is clean and the clients' own).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from tessera.core.errors import ConfigError
from tessera.core.techniques import TechniqueConfig
from tessera.plugins.aggregators.byzantine import RobustAggregator

log = logging.getLogger("tessera")


def fltrust_aggregate(global_arrays: dict, root_arrays: dict, client_arrays: list[dict]) -> tuple[dict, list]:
    """FLTrust's aggregate of the clients' parameters ``client_arrays`` around ``global_arrays``, the server's
    root-trained ``root_arrays`` the reference: the new global arrays (float32 torch tensors by name) and the trust
    score of every client. All scores 0: the global arrays unchanged."""
    import torch

    names = sorted(global_arrays)
    base = torch.cat([torch.as_tensor(global_arrays[n]).double().flatten() for n in names])

    def flat(arrays):
        return torch.cat([torch.as_tensor(arrays[n]).double().flatten() for n in names]) - base

    g0 = flat(root_arrays)
    reference = g0.norm()
    total, scores = torch.zeros_like(base), []
    for arrays in client_arrays:
        gi = flat(arrays)
        length = gi.norm()
        if length == 0 or reference == 0:
            scores.append(0.0)
            continue
        score = max(0.0, float(gi @ g0 / (length * reference)))
        scores.append(score)
        total += score * gi * (reference / length)
    if sum(scores) == 0:
        return {n: torch.as_tensor(global_arrays[n]).float().clone() for n in names}, scores
    merged = base + total / sum(scores)
    out, start = {}, 0
    for n in names:
        shape = torch.as_tensor(global_arrays[n]).shape
        size = shape.numel()
        out[n] = merged[start : start + size].reshape(shape).float()
        start += size
    return out, scores


class FLTrustStrategy(FedAvg):
    """Flower's FedAvg (its sampling and ``configure_train``) with FLTrust's ``aggregate_train``;
    ``train_root(arrays, server_round)`` returns the global ``arrays`` trained one local round on the root set."""

    def __init__(self, train_root, **options):
        super().__init__(**options)
        self.train_root = train_root
        # This round's global parameters (torch tensors; configure_train sets them every round, so they are not
        # part of a round checkpoint's strategy state).
        self._global: dict | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._global = {name: tensor.float() for name, tensor in arrays.to_torch_state_dict().items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._global is None:
            raise RuntimeError("FLTrust aggregates a round that configure_train did not configure")
        root = self.train_root(self._global, server_round)
        clients = [message.content[self.arrayrecord_key].to_torch_state_dict() for message in valid]
        arrays, scores = fltrust_aggregate(self._global, root, clients)
        if sum(scores) == 0:
            log.warning(
                "round %d: FLTrust trusts none of the %d clients (every update points away from the server's "
                "root update): the global model is kept",
                server_round,
                len(valid),
            )
        metrics = self.train_metrics_aggr_fn([message.content for message in valid], self.weighted_by_key)
        metrics["trust_mean"] = sum(scores) / len(scores)
        metrics["trusted"] = sum(1 for score in scores if score > 0)
        return ArrayRecord(arrays), metrics


@dataclass
class FLTrustConfig(TechniqueConfig):
    #: The server's root set: this many training examples (a seeded sample), kept out of the clients' partitions.
    root_examples: int = 100


class FLTrust(RobustAggregator):
    """Client updates weighted by their cosine trust against the server's own update on a clean root set, each
    rescaled to the server update's length."""

    name = "fltrust"
    Config = FLTrustConfig

    def root_examples(self) -> int:
        return self.config.root_examples

    def validate(self, composition):
        if self.config.root_examples < 1:
            raise ConfigError(f"aggregator.fltrust.root_examples={self.config.root_examples} must be at least 1")
        super().validate(composition)

    def strategy(self, context):
        if context.train_root is None:
            raise ConfigError("fltrust needs the server's root set, which this federation does not provide")
        return FLTrustStrategy(context.train_root, **context.strategy_options)
