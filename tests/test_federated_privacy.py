"""Differential privacy and secure aggregation of a federation (``federated.privacy``): the RDP accountant against
DP-FedAvg's published figure, Flower's DP wrappers and clipping mods on small tensors, SecAgg+ rounds on tessera's
in-process grid against plain FedAvg, the refusals, and real runs of the tiny model in every mode."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp.strategy import FedAdam, FedAvg
from omegaconf import OmegaConf

from conftest import load_json, make_plugin, tessera
from tessera.core.config import TesseraConfig
from tessera.core.errors import ConfigError, IncompatibleError
from tessera.core.techniques import Aggregator
from tessera.federated import secagg
from tessera.federated.grid import InProcessGrid
from tessera.federated.privacy import Privacy, epsilon, equal_weights_mod, noise_multiplier
from tessera.federated.rounds import Federation
from tessera.federated.stage import validate_privacy

OPTIONS = {"fraction_evaluate": 0.0, "min_train_nodes": 4, "min_available_nodes": 4}
SHAPES = {"w": (40,), "b": (3, 5)}


def config(clients=4, rounds=2, fraction=1.0, **privacy):
    cfg = OmegaConf.structured(TesseraConfig)
    cfg.federated.clients, cfg.federated.rounds, cfg.federated.fraction = clients, rounds, fraction
    cfg.federated.privacy = OmegaConf.merge(cfg.federated.privacy, privacy)
    return cfg


def toy_app(mods=(), scale=0.1):
    """A ClientApp whose update is ``w + scale * noise`` seeded by the partition (examples: 10 + partition)."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(message, context):
        partition = int(context.node_config["partition-id"])
        arrays = message.content.array_records["arrays"].to_torch_state_dict()
        server_round = int(message.content.config_records["config"]["server-round"])
        noise = toy_update(arrays, partition, server_round, scale)
        update = {k: v + noise[k] for k, v in arrays.items()}
        metrics = MetricRecord({"num-examples": 10 + partition, "train_loss": float(partition)})
        return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": metrics}), reply_to=message)

    return app


def toy_update(arrays: dict, partition: int, server_round: int, scale: float = 0.1) -> dict:
    """The update the toy client of ``partition`` makes in ``server_round``."""
    generator = torch.Generator().manual_seed(partition * 100 + server_round)
    return {k: scale * torch.randn(v.shape, generator=generator) for k, v in arrays.items()}


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every reply the server receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        self.seen += replies
        return replies


def federate(tmp_path, strategy, app, rounds=1, exchange=None, account=None, grid=None):
    initial = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    grid = grid or InProcessGrid(app, 4, {})
    federation = Federation(
        strategy,
        grid,
        initial,
        rounds,
        4,
        lambda _: {},
        lambda _: None,
        tmp_path,
        {},
        exchange=exchange,
        account=account,
    )
    return federation.run(False), federation


def norm(arrays: dict) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in arrays.values()))


# --- the accountant ------------------------------------------------------------------------------------------


def test_the_rdp_accountant_reproduces_dp_fedavg_epsilon_7_9():
    """DP-FedAvg with noise multiplier 1, sampling rate 0.1, 100 rounds, delta 1e-5: epsilon 7.9 (RDP)."""
    assert epsilon([(1.0, 0.1)] * 100, 1e-5) == pytest.approx(7.9, abs=0.05)
    assert epsilon([(1.0, 0.1)] * 50, 1e-5) < epsilon([(1.0, 0.1)] * 100, 1e-5) < epsilon([(0.8, 0.1)] * 100, 1e-5)
    assert epsilon([(0.0, 0.1)], 1e-5) == math.inf


@pytest.mark.parametrize("target", [8.0, 2.0])
def test_a_target_epsilon_chooses_the_noise_that_reaches_it(target):
    cfg = config(clients=100, rounds=100, fraction=0.1, dp="server_fixed", target_epsilon=target)
    z = noise_multiplier(cfg)
    reached = epsilon([(z, 0.1)] * 100, 1e-5)
    assert target - 0.1 < reached <= target
    assert epsilon([(z * 0.95, 0.1)] * 100, 1e-5) > target  # no much smaller noise reaches it


def test_each_round_is_charged_its_noise_and_lost_clients_raise_the_cost():
    privacy = Privacy(config(clients=10, fraction=0.5, dp="server_fixed", noise_multiplier=1.0))
    history = []
    for server_round, answered in ((1, 5), (2, 4)):
        record = {"round": server_round, "clients": 5, "answered": answered}
        privacy.account(record, history)
        history.append(record)
    assert history[0]["privacy"]["noise_multiplier"] == 1.0 and history[1]["privacy"]["noise_multiplier"] == 0.8
    assert history[1]["privacy"]["epsilon"] == pytest.approx(epsilon([(1.0, 0.5), (0.8, 0.5)], 1e-5))
    summary = privacy.summary(history)
    assert summary["epsilon"] == history[1]["privacy"]["epsilon"] and summary["delta"] == 1e-5


# --- noise and clipping on small tensors -----------------------------------------------------------------------


def test_server_side_noise_changes_the_aggregate_by_z_c_over_n(tmp_path):
    plain, _ = federate(tmp_path / "a", FedAvg(**OPTIONS), toy_app([equal_weights_mod]))
    big = Privacy(config(dp="server_fixed", noise_multiplier=1.0, clipping_norm=100.0))  # no update is clipped
    noisy, _ = federate(tmp_path / "b", big.wrap(FedAvg(**OPTIONS), 4), toy_app([equal_weights_mod]))
    difference = torch.cat([(noisy[k] - plain[k]).flatten() for k in SHAPES])
    assert float(difference.std()) == pytest.approx(1.0 * 100.0 / 4, rel=0.3)  # the noise's stdev is z * C / n


def test_server_side_clipping_bounds_every_update(tmp_path):
    """Without noise the aggregate of clipped updates moves at most C from the global model."""
    privacy = Privacy(config(dp="server_fixed", noise_multiplier=0.0, clipping_norm=0.5))
    unclipped, _ = federate(tmp_path / "a", FedAvg(**OPTIONS), toy_app(scale=1.0))
    clipped, _ = federate(tmp_path / "b", privacy.wrap(FedAvg(**OPTIONS), 4), toy_app(scale=1.0))
    assert norm(unclipped) > 2.0 and norm(clipped) <= 0.5 + 1e-5


def test_the_client_mods_clip_before_sending(tmp_path):
    privacy = Privacy(config(dp="client_fixed", noise_multiplier=0.0, clipping_norm=0.3))
    grid = RecordingGrid(toy_app(privacy.client_mods(), scale=1.0), 4, {})
    federate(tmp_path, privacy.wrap(FedAvg(**OPTIONS), 4), None, grid=grid)
    updates = [reply.content.array_records["arrays"].to_torch_state_dict() for reply in grid.seen]
    assert len(updates) == 4 and all(norm(update) <= 0.3 + 1e-5 for update in updates)
    assert all(reply.content.metric_records["metrics"]["num-examples"] == 1 for reply in grid.seen)


def test_the_deployed_client_app_takes_its_mods_from_the_run_config(tmp_path):
    """On a Flower deployment the ClientApp's mod (``tessera.federated.app.config_mods``) applies the run config's
    client-side clipping and equal weights, as the in-process grid's ClientApp does."""
    from tessera.federated.app import CONFIG_KEY, config_mods

    cfg = config(dp="client_fixed", noise_multiplier=0.0, clipping_norm=0.3)
    grid = RecordingGrid(toy_app([config_mods], scale=1.0), 4, {CONFIG_KEY: OmegaConf.to_yaml(cfg)})
    federate(tmp_path, Privacy(cfg).wrap(FedAvg(**OPTIONS), 4), None, grid=grid)
    updates = [reply.content.array_records["arrays"].to_torch_state_dict() for reply in grid.seen]
    assert len(updates) == 4 and all(norm(update) <= 0.3 + 1e-5 for update in updates)
    assert all(reply.content.metric_records["metrics"]["num-examples"] == 1 for reply in grid.seen)
    plain = RecordingGrid(toy_app([config_mods], scale=1.0), 4, {CONFIG_KEY: OmegaConf.to_yaml(config())})
    federate(tmp_path / "plain", FedAvg(**OPTIONS), None, grid=plain)
    assert all(norm(reply.content.array_records["arrays"].to_torch_state_dict()) > 1 for reply in plain.seen)


@pytest.mark.parametrize("mode", ["server_adaptive", "client_adaptive"])
def test_adaptive_clipping_moves_the_norm_towards_the_quantile(tmp_path, mode):
    """The toy updates have norm ~0.8: from 0.01 (every update clipped) the norm grows, from 100 (none) it
    shrinks (Flower 1.32.1's own wrappers move it the other way)."""
    for start, grows in ((0.01, True), (100.0, False)):
        settings = {"noise_multiplier": 0.0, "initial_clipping_norm": start, "target_clipped_quantile": 0.5}
        privacy = Privacy(config(dp=mode, **settings))
        strategy = privacy.wrap(FedAvg(**OPTIONS), 4)
        np.random.seed(0)
        federate(tmp_path / f"{mode}-{start}", strategy, toy_app(privacy.client_mods()), rounds=2)
        assert (strategy.clipping_norm > start) == grows, (mode, start, strategy.clipping_norm)
        assert strategy.clipping_norm == pytest.approx(start * math.exp(0.2 * 0.5 * (2 if grows else -2)))


# --- secure aggregation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [FedAvg, FedAdam])
def test_a_secagg_round_gives_the_plain_aggregate_up_to_quantisation(tmp_path, strategy):
    cfg = config(secagg=True)
    plain, _ = federate(tmp_path / "a", strategy(**OPTIONS), toy_app())
    grid = RecordingGrid(toy_app(secagg.client_mods()), 4, {})
    exchange = Privacy(cfg).exchange(13, None)
    secure, federation = federate(tmp_path / "b", strategy(**OPTIONS), None, exchange=exchange, grid=grid)
    tolerance = secagg.quantisation_error(cfg.federated.privacy, [10, 11, 12, 13], 13)
    assert 0 < tolerance < 1e-4
    difference = max(float((secure[k] - plain[k]).abs().max()) for k in SHAPES)
    assert difference <= tolerance * (10 if strategy is FedAdam else 1)  # FedAdam scales the pseudo-gradient
    assert 0 < difference  # the quantised sum is not the plain one bit for bit
    # the server received only keys, shares and masked integer vectors: no reply carried a client's arrays
    assert grid.seen and all(not any(len(r) for r in reply.content.array_records.values()) for reply in grid.seen)
    assert federation.history[0]["answered"] == 4 and federation.history[0]["bytes_received"] > 0


def test_a_client_lost_during_secagg_is_left_out_of_the_secure_average(tmp_path):
    """Six clients, seeded faults: one drops out, the masks of the others still cancel and the average is theirs
    (including a client lost after sharing its keys, whose masks its neighbours' shares remove)."""
    cfg = config(clients=6, secagg=True)
    options = {"fraction_evaluate": 0.0, "min_train_nodes": 6, "min_available_nodes": 6}
    initial = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    for seed in (7, 9):  # node 6 lost at the first stage; node 2 after sharing its keys
        grid = RecordingGrid(toy_app(secagg.client_mods()), 6, {}, dropout=0.2, seed=seed)
        federation = Federation(
            FedAvg(**options), grid, initial, 1, 2, lambda _: {}, lambda _: None, tmp_path / str(seed), {},
            exchange=Privacy(cfg).exchange(15, None),
        )  # fmt: skip
        secure = federation.run(False)
        masked = [
            r.metadata.src_node_id
            for r in grid.seen
            if not r.has_error() and Key.MASKED_PARAMETERS in r.content.config_records.get(RECORD_KEY_CONFIGS, {})
        ]
        assert len(masked) == 5 and federation.history[0]["answered"] == 5 and federation.history[0]["lost"] == 1
        weights = [10 + node - 1 for node in masked]
        updates = [toy_update(initial, node - 1, 1) for node in masked]
        expected = {k: sum(w * u[k] for w, u in zip(weights, updates)) / sum(weights) for k in initial}
        tolerance = secagg.quantisation_error(cfg.federated.privacy, weights, 15)
        assert max(float((secure[k] - expected[k]).abs().max()) for k in SHAPES) <= tolerance


def test_secagg_with_client_side_dp_noises_the_secure_sum(tmp_path):
    privacy = Privacy(config(dp="client_fixed", noise_multiplier=0.0, clipping_norm=0.2, secagg=True))
    exchange = privacy.exchange(13, None)
    secure, _ = federate(
        tmp_path, privacy.wrap(FedAvg(**OPTIONS), 4), toy_app(privacy.client_mods(), scale=1.0), exchange=exchange
    )
    assert norm(secure) <= 0.2 + 1e-3


# --- refusals ----------------------------------------------------------------------------------------------


class Sorting(Aggregator):
    """A test aggregator that needs every update (like the median)."""

    name = "sorting"
    sum_only = False

    def strategy(self, context):
        return FedAvg(**context.strategy_options)


class Averaging(Sorting):
    name = "averaging"
    sum_only = True


def test_secagg_and_dp_are_refused_with_an_aggregator_that_needs_every_update():
    with pytest.raises(IncompatibleError) as found:
        validate_privacy(Sorting({}), config(secagg=True))
    assert str(found.value) == (
        "aggregator=sorting and federated.privacy.secagg=true cannot be combined: sorting needs every client's "
        "update, secure aggregation reveals only their sum"
    )
    with pytest.raises(IncompatibleError, match="aggregator=sorting and federated.privacy.dp=client_fixed"):
        validate_privacy(Sorting({}), config(dp="client_fixed"))
    validate_privacy(Averaging({}), config(dp="client_fixed", secagg=True))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dp": "gaussian"}, "federated.privacy.dp=gaussian is not one of none, server_fixed"),
        ({"dp": "server_fixed", "secagg": True}, "server-side clipping needs every client's update"),
        ({"dp": "server_adaptive", "noise_multiplier": 1.0}, "set federated.privacy.clipped_count_stddev"),
        ({"dp": "client_fixed", "delta": 2.0}, "federated.privacy.delta=2.0 must be in"),
        ({"dp": "client_fixed", "clipping_norm": 0.0}, "federated.privacy.clipping_norm=0.0 must be positive"),
        ({"dp": "client_adaptive", "target_epsilon": 1e-4}, "federated.privacy.target_epsilon=0.0001 cannot be"),
    ],
)
def test_bad_privacy_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as found:
        validate_privacy(Averaging({}), config(**settings))
    assert "\n" not in str(found.value)


SORTING_PLUGIN = """
from flwr.serverapp.strategy import FedMedian

from tessera import hookimpl
from tessera.core.techniques import Aggregator


class Sorting(Aggregator):
    name = "sorting"
    sum_only = False

    def strategy(self, context):
        return FedMedian(**context.strategy_options)


@hookimpl
def tessera_aggregators():
    return [Sorting]
"""


def test_the_cli_refuses_secagg_with_a_registered_aggregator_that_needs_every_update(tmp_path):
    make_plugin(tmp_path / "plugin", "sorting", SORTING_PLUGIN)
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=sorting",
        "federated.clients=4",
        "federated.privacy.secagg=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "plugin"), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: aggregator=sorting and federated.privacy.secagg=true cannot be combined: sorting needs every "
        "client's update, secure aggregation reveals only their sum"
    ], result.stderr[-2000:]


# --- real runs of the tiny model ------------------------------------------------------------------------------


MODES = [
    ["federated.privacy.dp=server_fixed"],
    ["federated.privacy.dp=server_adaptive", "federated.privacy.clipped_count_stddev=1.0"],
    ["federated.privacy.dp=client_fixed", "federated.privacy.secagg=true"],
    ["federated.privacy.dp=client_adaptive", "federated.privacy.clipped_count_stddev=1.0"],
    ["federated.privacy.secagg=true"],
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "+".join(x.split("=")[-1] for x in o[:2]))
def test_every_mode_runs_end_to_end_and_reports_epsilon(tmp_path, overrides):
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=fedavg",
        "federated.clients=4",
        "federated.rounds=2",
        "federated.privacy.noise_multiplier=0.5",
        *overrides,
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    federated = load_json(tmp_path / "metrics.json")["federated"]
    privacy, rounds = federated["privacy"], federated["rounds"]
    assert [r["answered"] for r in rounds] == [4, 4]
    if "federated.privacy.secagg=true" in overrides:
        assert privacy["secagg"] is True
    if privacy["dp"] == "none":
        assert privacy["epsilon"] is None and "privacy" not in rounds[0]
        return
    assert privacy["delta"] == 1e-5 and privacy["epsilon"] == rounds[-1]["privacy"]["epsilon"]
    assert privacy["epsilon"] == pytest.approx(epsilon([(0.5, 1.0)] * 2, 1e-5))
    assert 0 < rounds[0]["privacy"]["epsilon"] < rounds[1]["privacy"]["epsilon"]


@pytest.mark.slow
def test_a_target_epsilon_run_reports_the_chosen_noise(tmp_path):
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=fedavg",
        "federated.clients=4",
        "federated.rounds=2",
        "federated.privacy.dp=server_fixed",
        "federated.privacy.target_epsilon=8",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    privacy = load_json(tmp_path / "metrics.json")["federated"]["privacy"]
    assert 7.9 < privacy["epsilon"] <= 8.0 and privacy["target_epsilon"] == 8.0
    assert "federated.privacy.target_epsilon=8: noise multiplier" in result.stdout + result.stderr
