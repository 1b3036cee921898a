"""The federated engine: partitions, the round loop on tessera's in-process Flower grid (lost clients, bad
replies, checkpoints and resume), FedProx's proximal term, and real federated runs of the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg

from conftest import load_json, tessera
from tessera.core.errors import ConfigError
from tessera.federated.client import proximal_term
from tessera.federated.grid import InProcessGrid
from tessera.federated.partition import partition
from tessera.federated.rounds import Federation, FederationError

EXAMPLES = [{"text": f"t{i}", "label": str(i % 3)} for i in range(60)]


def test_iid_partition_deals_every_example_once_in_near_equal_shares():
    shares = partition(EXAMPLES, 7, "iid", 0.5, seed=1)
    assert sorted(i for share in shares for i in share) == list(range(60))
    assert {len(share) for share in shares} <= {8, 9}
    assert shares == partition(EXAMPLES, 7, "iid", 0.5, seed=1) != partition(EXAMPLES, 7, "iid", 0.5, seed=2)


def test_by_label_and_small_alpha_dirichlet_give_clients_few_labels():
    for kind, alpha in (("by_label", 0.5), ("dirichlet", 0.05)):
        shares = partition(EXAMPLES, 6, kind, alpha, seed=0)
        assert sorted(i for share in shares for i in share) == list(range(60)) and all(shares)
        labels = [{EXAMPLES[i]["label"] for i in share} for share in shares]
        assert sum(len(found) for found in labels) / len(labels) < 2.5, (kind, labels)
    iid = partition(EXAMPLES, 6, "iid", 0.5, seed=0)
    assert all(len({EXAMPLES[i]["label"] for i in share}) == 3 for share in iid)


def test_more_clients_than_examples_is_refused():
    with pytest.raises(ConfigError, match="federated.clients=61 is more than the 60 training examples"):
        partition(EXAMPLES, 61, "iid", 0.5, seed=0)
    with pytest.raises(ConfigError, match="not one of iid, dirichlet, by_label"):
        partition(EXAMPLES, 2, "shards", 0.5, seed=0)


# --- the round loop on the in-process grid, with a client that adds its partition id ------------------------


def toy_app(fail: set[int] = frozenset(), wrong_shape: set[int] = frozenset(), interrupt_round: int = 0):
    """A ClientApp whose update is ``w + partition + 1`` (nodes in ``fail`` raise, those in ``wrong_shape`` send a
    tensor of another shape; at ``interrupt_round`` the process is interrupted, as by Ctrl-C)."""
    app = ClientApp()

    @app.train()
    def train(message, context):
        partition_id = int(context.node_config["partition-id"])
        server_round = message.content.config_records["config"]["server-round"]
        if server_round == interrupt_round:
            raise KeyboardInterrupt
        if partition_id in fail:
            raise RuntimeError("the disk is full")
        arrays = message.content.array_records["arrays"].to_torch_state_dict()
        update = {k: v + partition_id + 1 for k, v in arrays.items()}
        if partition_id in wrong_shape:
            update = {k: torch.zeros(5) for k in arrays}
        metrics = MetricRecord({"num-examples": 10, "train_loss": float(partition_id)})
        return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": metrics}), reply_to=message)

    return app


def federation(tmp_path, app, strategy=None, rounds=2, min_clients=4, clients=4, records=None):
    options = {"fraction_evaluate": 0.0, "min_train_nodes": clients, "min_available_nodes": clients}
    return Federation(
        strategy or FedAvg(**options),
        InProcessGrid(app, clients, {}),
        {"w": torch.zeros(3)},
        rounds,
        min_clients,
        evaluate=lambda arrays: {"w0": float(arrays["w"][0])},
        round_end=(records.append if records is not None else lambda record: None),
        directory=tmp_path,
        fingerprint={"federated.rounds": rounds},
        seed=3,
    )


def test_rounds_aggregate_the_clients_updates_and_record_each_round(tmp_path):
    records = []
    final = federation(tmp_path, toy_app(), records=records).run(resume=False)
    assert torch.allclose(final["w"], torch.full((3,), 5.0))  # two rounds of the mean of +1..+4
    assert [r["validation"]["w0"] for r in records] == [2.5, 5.0]
    assert all(r["answered"] == 4 and r["lost"] == 0 for r in records)
    assert records[0]["bytes_sent"] == records[0]["bytes_received"] > 4 * 3 * 4
    assert [p.name for p in (tmp_path / "rounds").iterdir()] == ["round-0002"]


def test_a_round_completes_without_lost_clients_when_enough_answered(tmp_path, caplog):
    records = []
    final = federation(tmp_path, toy_app(fail={1}, wrong_shape={2}), min_clients=2, records=records).run(False)
    assert torch.allclose(final["w"], torch.full((3,), 5.0))  # the mean of +1 and +4, twice
    assert records[0]["answered"] == 2 and records[0]["lost"] == 2
    assert "RuntimeError: the disk is full" in caplog.text
    assert "sent parameters that do not fit the model (parameter w has shape [5], the model's is [3])" in caplog.text


def test_a_round_with_too_few_answers_fails_in_one_line(tmp_path):
    with pytest.raises(FederationError) as error:
        federation(tmp_path, toy_app(fail={0, 1}), min_clients=3).run(False)
    assert str(error.value).startswith("round 1: only 2 of 4 clients answered, fewer than federated.min_clients=3")


def test_resume_continues_after_the_last_complete_round_with_the_strategy_state(tmp_path):
    def adam():
        return FedAdam(fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4, eta=0.1)

    uninterrupted = federation(tmp_path / "a", toy_app(), adam(), rounds=4).run(False)
    with pytest.raises(KeyboardInterrupt):
        federation(tmp_path / "b", toy_app(interrupt_round=3), adam(), rounds=4).run(False)
    assert [p.name for p in (tmp_path / "b" / "rounds").iterdir()] == ["round-0002"]
    records = []
    resumed = federation(tmp_path / "b", toy_app(), adam(), rounds=4, records=records).run(True)
    assert [r["round"] for r in records] == [3, 4]
    assert torch.equal(resumed["w"], uninterrupted["w"])  # FedAdam's moments came back with the checkpoint
    fresh = adam()
    assert not torch.equal(federation(tmp_path / "c", toy_app(), fresh, rounds=2).run(False)["w"], resumed["w"])


def test_resume_refuses_another_config(tmp_path):
    federation(tmp_path, toy_app(), rounds=2).run(False)
    changed = federation(tmp_path, toy_app(), rounds=3)
    with pytest.raises(ConfigError, match="was written with another config"):
        changed.run(True)


def test_dropout_is_seeded_per_round(tmp_path):
    grid = InProcessGrid(toy_app(), 8, {}, dropout=0.5, seed=1)
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=8, min_available_nodes=8)
    from flwr.app import ConfigRecord

    def lost(server_round):
        messages = strategy.configure_train(server_round, ArrayRecord({"w": torch.zeros(3)}), ConfigRecord(), grid)
        return sorted(m.metadata.src_node_id for m in grid.send_and_receive(messages) if m.has_error())

    assert lost(1) == lost(1) and 0 < len(lost(1)) < 8 and lost(1) != lost(2)


def test_the_proximal_term_is_mu_over_two_times_the_squared_distance():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    term = proximal_term({"weight": torch.tensor([[0.0, 0.0]])}, mu=0.5)
    assert term(torch.tensor(1.0), model).item() == pytest.approx(1.0 + 0.25 * 5.0)


# --- real federated runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("federated") / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=fedavg",
        "federated.clients=4",
        "federated.rounds=2",
        "federated.partition=dirichlet",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_federated_run_is_a_complete_run_with_an_export(fedavg_run):
    from transformers import AutoModelForSequenceClassification

    assert load_json(fedavg_run / "run.json")["status"] == "complete"
    metrics = load_json(fedavg_run / "metrics.json")
    federated = metrics["federated"]
    assert federated["aggregator"] == "fedavg" and sum(federated["examples_per_client"]) == 320
    assert [r["round"] for r in federated["rounds"]] == [1, 2]
    assert "accuracy" in metrics["test"] and "accuracy" in federated["rounds"][-1]["validation"]
    AutoModelForSequenceClassification.from_pretrained(fedavg_run / "export")


def test_only_the_trainable_parameters_travel(fedavg_run):
    from safetensors import safe_open

    federated = load_json(fedavg_run / "metrics.json")["federated"]
    with safe_open(str(fedavg_run / "export" / "model.safetensors"), "pt") as handle:
        total = sum(torch.Size(handle.get_slice(n).get_shape()).numel() for n in handle.keys())
    trainable = federated["trainable_parameters"]
    assert trainable < total / 5  # LoRA: the adapter and the head, not the base
    per_client = federated["rounds"][0]["bytes_sent"] / federated["rounds"][0]["clients"]
    assert 4 * trainable <= per_client < 4 * trainable * 1.1


def test_rounds_are_in_tensorboard_and_the_round_checkpoint_is_kept(fedavg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fedavg_run / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("round/validation/accuracy")]
    assert steps == [1, 2] and "round/bytes_sent" in events.Tags()["scalars"]
    state = json.loads((fedavg_run / "rounds" / "round-0002" / "state.json").read_text())
    assert state["round"] == 2 and len(state["history"]) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federated.min_clients=5"], "federated.min_clients=5 must be between 1 and the 4 clients a round samples"),
        (["federated.clients=400"], "federated.clients=400 is more than the 320 training examples"),
        (["federated.rounds=0"], "federated.rounds=0 must be at least 1"),
        (["aggregator=[fedavg,fedprox]"], "a federation has one aggregator"),
    ],
)
def test_impossible_federations_are_refused_in_one_line(tmp_path, overrides, message):
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=fedavg",
        "federated.clients=4",
        *overrides,
        f"hydra.run.dir={tmp_path}/r",
    )
    assert result.returncode == 2 and not (tmp_path / "r").exists(), result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
