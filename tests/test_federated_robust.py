"""The robust aggregators and the Byzantine attacks: every aggregator in a real federated run (tiny model, two
rounds) that exports; the guarantees' client minimums refused in one line; Flower's strategies and FLTrust on
hand-built replies, where one huge sign-flipped update moves FedAvg and not them; FLTrust's aggregate against a hand
computation; each attack's sent update against its formula, on a real stage's clients."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from conftest import load_json, plugins, tessera
from tessera.core.cli import compose_config, main
from tessera.core.techniques import FederationContext
from tessera.federated import attacks
from tessera.plugins.aggregators import AGGREGATORS

SMALL = ["experiment=smoke", "data.limit_train=140", "data.limit_eval=40", "trainer.num_threads=1"]
BY_NAME = {aggregator.name: aggregator for aggregator in AGGREGATORS}


# --- real federated runs ---------------------------------------------------------------------------------------

RUNS = {
    "krum": ["federated.attack=sign_flip", "federated.attackers=0.2"],
    "multikrum": ["aggregator.multikrum.num_to_select=3"],
    "bulyan": ["federated.attack=sign_flip", "federated.attackers=0.15"],
    "trimmed_mean": ["federated.attack=label_flip", "federated.attackers=0.2"],
    "median": ["federated.attack=gaussian", "federated.attackers=0.2"],
    "fltrust": ["aggregator.fltrust.root_examples=30", "federated.attack=alie", "federated.attackers=0.3"],
}


@pytest.mark.parametrize("name", RUNS)
def test_a_robust_aggregator_federates_and_exports(name, tmp_path):
    run = tmp_path / "run"
    overrides = [*SMALL, f"aggregator={name}", "federated.clients=7", "federated.rounds=2", *RUNS[name]]
    assert main(["train", *overrides, f"hydra.run.dir={run}"]) == 0
    metrics = load_json(run / "metrics.json")
    federated = metrics["federated"]
    assert federated["aggregator"] == name and len(federated["rounds"]) == 2
    assert all(r["answered"] == 7 and r["bytes_received"] == r["bytes_sent"] > 0 for r in federated["rounds"])
    cfg = compose_config(overrides, plugins())
    assert federated["attack"] == cfg.federated.attack
    assert federated["attackers"] == (attacks.attackers(cfg) if cfg.federated.attackers else [])
    assert len(federated["attackers"]) == attacks.attacker_count(cfg)
    if name == "fltrust":
        assert federated["root_examples"] == 30 and sum(federated["examples_per_client"]) == 140 - 30
        assert all(0 <= r["train"]["trust_mean"] <= 1 for r in federated["rounds"])
    assert (run / "export" / "config.json").is_file() and "accuracy" in metrics["test"]


def test_bulyan_with_fewer_than_4f_plus_3_clients_is_refused_in_one_line(tmp_path):
    result = tessera("train", *SMALL, "aggregator=bulyan", "federated.clients=6", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert result.stderr.strip().splitlines() == [
        "error: aggregator=bulyan needs at least 7 clients per round, but a round samples 6 (federated.clients=6, "
        "federated.fraction=1.0): add clients or choose another aggregator"
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["aggregator=krum", "federated.clients=4"], "aggregator=krum needs at least 5 clients per round"),
        (["aggregator=bulyan", "federated.clients=8", "federated.min_clients=6"], "lets a round aggregate fewer"),
        (["aggregator=trimmed_mean", "aggregator.trimmed_mean.beta=0.5"], "must be in [0, 0.5)"),
        (["aggregator=fedavg", "federated.attack=sign_flip"], "needs attacking clients"),
        (["aggregator=fedavg", "federated.attackers=0.2"], "without an attack"),
        (["aggregator=fedavg", "federated.attack=gaussian", "federated.attackers=1.0"], "must be in [0, 1)"),
        (["aggregator=fedavg", "federated.attack=flood", "federated.attackers=0.2"], "is not one of none"),
        (["aggregator=fedavg", "federated.attack=alie", "federated.attackers=0.1"], "at least 2 attackers"),
    ],
)
def test_bad_robust_configs_are_refused_in_one_line(overrides, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["train", *SMALL, *overrides, f"hydra.run.dir={tmp_path}/run"])
    assert exited.value.code == 2 and not (tmp_path / "run").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


# --- the aggregates on hand-built replies ----------------------------------------------------------------------


def reply(node: int, arrays: dict, examples: int = 10) -> Message:
    """A client's training reply as the grid hands it to the strategy."""
    ask = Message(RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": examples})})
    return Message(content, reply_to=ask)


def strategy(name: str, clients: int, train_root=None, **config):
    aggregator = BY_NAME[name](BY_NAME[name].Config(**config))
    options = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": clients}
    return aggregator.strategy(FederationContext(None, clients, clients, options, train_root))


def configured(flower, server_round: int, global_arrays: dict, clients: int):
    """Run the strategy's own ``configure_train`` (FLTrust keeps the round's global model from it)."""
    from flwr.app import ConfigRecord

    from tessera.federated.grid import InProcessGrid

    grid = InProcessGrid(None, clients, {})
    return list(flower.configure_train(server_round, ArrayRecord(global_arrays), ConfigRecord({}), grid))


def honest_and_one_huge(clients: int):
    """``clients - 1`` honest updates near +1 per coordinate and one sign-flipped, 100x larger one."""
    generator = torch.Generator().manual_seed(0)
    updates = [{"w": 1 + 0.1 * torch.randn(4, 3, generator=generator)} for _ in range(clients - 1)]
    return updates + [{"w": -100 * torch.ones(4, 3)}]


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan", "trimmed_mean", "median", "fltrust"])
def test_a_robust_aggregate_resists_a_huge_sign_flipped_update_where_fedavg_does_not(name):
    clients = 7
    global_arrays = {"w": torch.zeros(4, 3)}
    updates = honest_and_one_huge(clients)

    def aggregate(flower):
        configured(flower, 1, global_arrays, clients)
        arrays, _ = flower.aggregate_train(1, [reply(i + 1, u) for i, u in enumerate(updates)])
        return arrays.to_torch_state_dict()["w"]

    fedavg = aggregate(strategy("fedavg", clients))
    assert (fedavg < -10).all()  # (6 * 1 - 100) / 7
    root = {"w": 1 + 0.1 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1))}
    robust = aggregate(strategy(name, clients, train_root=lambda arrays, server_round: root))
    assert (robust - 1).abs().max() < 0.5, robust


def test_krum_takes_the_one_update_nearest_its_neighbours():
    updates = [{"w": torch.tensor([v])} for v in (1.0, 1.1, 0.9, 1.05, 50.0)]
    flower = strategy("krum", 5, num_malicious=1)
    arrays, _ = flower.aggregate_train(1, [reply(i + 1, u) for i, u in enumerate(updates)])
    # score: the squared distances to the n - f - 2 = 2 nearest: 1.05 has 0.05^2 + 0.05^2 (1.0, 1.1), the lowest;
    # 1.0 has 0.05^2 + 0.1^2, 1.1 and 0.9 more, 50 the most
    assert arrays.to_torch_state_dict()["w"].tolist() == pytest.approx([1.05])


def test_fltrust_aggregate_matches_a_hand_computation():
    from tessera.plugins.aggregators.fltrust import fltrust_aggregate

    global_arrays = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    root = {"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([[0.5]])}  # g0 = (1, 0, 0), |g0| = 1
    clients = [
        {"a": torch.tensor([3.0, 2.0]), "b": torch.tensor([[0.5]])},  # (2, 0, 0): cos 1
        {"a": torch.tensor([2.0, 3.0]), "b": torch.tensor([[0.5]])},  # (1, 1, 0): cos 1/sqrt 2
        {"a": torch.tensor([-4.0, 2.0]), "b": torch.tensor([[0.5]])},  # (-5, 0, 0): cos -1 -> 0
        {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.5]])},  # (0, 0, 3): cos 0
    ]
    new, scores = fltrust_aggregate(global_arrays, root, clients)
    r = 1 / math.sqrt(2)
    assert scores == pytest.approx([1.0, r, 0.0, 0.0])
    # (1 * (1, 0, 0) + r * (r, r, 0)) / (1 + r), the second rescaled to |g0| = 1
    step = [(1 + r * r) / (1 + r), r * r / (1 + r), 0.0]
    assert new["a"].tolist() == pytest.approx([1.0 + step[0], 2.0 + step[1]])
    assert new["b"].shape == (1, 1) and new["b"].item() == pytest.approx(0.5)

    kept, scores = fltrust_aggregate(global_arrays, root, clients[2:3])
    assert scores == [0.0] and all(torch.equal(kept[k], global_arrays[k]) for k in global_arrays)


def test_fltrust_strategy_trains_the_root_set_on_the_round_global_model_and_logs_zero_trust(caplog):
    seen = []
    global_arrays = {"w": torch.tensor([1.0, 1.0])}

    def train_root(arrays, server_round):
        seen.append((arrays["w"].tolist(), server_round))
        return {"w": arrays["w"] + torch.tensor([1.0, 0.0])}

    flower = strategy("fltrust", 2, train_root=train_root)
    assert len(configured(flower, 3, global_arrays, 2)) == 2
    flipped = [reply(1, {"w": torch.tensor([0.0, 1.0])}), reply(2, {"w": torch.tensor([-1.0, 1.0])})]
    with caplog.at_level("WARNING", logger="tessera"):
        arrays, metrics = flower.aggregate_train(3, flipped)
    assert seen == [([1.0, 1.0], 3)]
    assert arrays.to_torch_state_dict()["w"].tolist() == [1.0, 1.0]
    assert metrics["trusted"] == 0 and "FLTrust trusts none of the 2 clients" in caplog.text


# --- the attacks on a real stage's clients ---------------------------------------------------------------------


def stage(tmp_path, *overrides):
    """The clients (``LocalTraining``) of a real federated stage, built as ``tessera train`` builds it."""
    from tessera.core.data import load_splits
    from tessera.core.pipeline import build
    from tessera.core.run import Run, compose
    from tessera.federated.client import trainable_state
    from tessera.federated.stage import local_training

    cfg = compose_config([*SMALL, "aggregator=fedavg", "federated.clients=4", *overrides], plugins())
    run = Run(compose(cfg, plugins()), tmp_path)
    built = build(run, load_splits(cfg.data), {})
    local, _ = local_training(run, built)
    # The first local round of a process differs from the later ones by ~1e-3 (the trainer's one-time setup);
    # from the second on, a client's round repeats exactly, which the comparisons below rely on.
    local.train(0, trainable_state(local.model), {"server-round": 0}, honest=True)
    return local


def sent_and_honest(local, partition: int, server_round: int = 1):
    from tessera.federated.client import trainable_state

    global_arrays = trainable_state(local.model)
    config = {"server-round": server_round}
    sent, _ = local.train(partition, global_arrays, config)
    honest, _ = local.train(partition, global_arrays, config, honest=True)
    return global_arrays, sent, honest


def test_sign_flip_sends_the_update_reversed_and_scaled(tmp_path):
    local = stage(tmp_path, "federated.attack=sign_flip", "federated.attackers=0.25")
    (attacker,) = local.attackers
    w, sent, trained = sent_and_honest(local, attacker)
    for name in w:
        assert torch.allclose(sent[name], w[name] - attacks.SIGN_FLIP_SCALE * (trained[name] - w[name]), atol=1e-6)
    assert any(not torch.equal(trained[n], w[n]) for n in w)  # the attacker really trained
    honest = next(p for p in range(4) if p != attacker)
    _, sent, trained = sent_and_honest(local, honest)
    assert all(torch.equal(sent[n], trained[n]) for n in w)


def test_gaussian_sends_the_global_model_plus_seeded_noise(tmp_path):
    local = stage(tmp_path, "federated.attack=gaussian", "federated.attackers=0.25")
    (attacker,) = local.attackers
    w, sent, _ = sent_and_honest(local, attacker)
    noise = torch.cat([(sent[n] - w[n]).flatten() for n in w])
    assert abs(noise.mean().item()) < 5 and noise.std().item() == pytest.approx(attacks.GAUSSIAN_SIGMA, rel=0.05)
    again, _ = local.train(attacker, w, {"server-round": 1})
    later, _ = local.train(attacker, w, {"server-round": 2})
    assert all(torch.equal(again[n], sent[n]) for n in w) and not torch.equal(later[next(iter(w))], sent[next(iter(w))])


def test_label_flip_trains_the_attackers_on_flipped_labels(tmp_path):
    clean = stage(tmp_path / "clean")
    flipped = stage(tmp_path / "flipped", "federated.attack=label_flip", "federated.attackers=0.5")
    assert len(flipped.attackers) == 2 and flipped.corrupt is None
    for partition in range(4):
        before = [item["labels"] for item in clean.partitions[partition]]
        after = [item["labels"] for item in flipped.partitions[partition]]
        assert after == ([1 - label for label in before] if partition in flipped.attackers else before)
        assert [i["input_ids"] for i in clean.partitions[partition]] == [
            i["input_ids"] for i in flipped.partitions[partition]
        ]


def test_alie_sends_the_mean_minus_z_deviations_of_the_attackers_honest_updates(tmp_path):
    from tessera.federated.client import trainable_state

    local = stage(tmp_path, "federated.attack=alie", "federated.attackers=0.5")
    first, second = local.attackers
    w, config = trainable_state(local.model), {"server-round": 1}
    honest_first, _ = local.train(first, w, config, honest=True)
    honest_second, _ = local.train(second, w, config, honest=True)
    sent_first, _ = local.train(first, w, config)  # trains the second attacker's partition too, once
    sent_second, _ = local.train(second, w, config)
    z = attacks.alie_z(4, 2)  # s = floor(4 / 2 + 1) - 2 = 1: Phi^-1(3 / 4)
    assert z == pytest.approx(0.6744897501960817)
    for name in w:
        updates = torch.stack([honest_first[name] - w[name], honest_second[name] - w[name]])
        expected = w[name] + updates.mean(0) - z * updates.std(0, unbiased=False)
        assert torch.allclose(sent_first[name], expected, atol=1e-6)
        assert not torch.allclose(sent_first[name], honest_first[name], atol=1e-6)
        assert torch.equal(sent_first[name], sent_second[name])
