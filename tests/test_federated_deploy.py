"""``tessera federate``: a federated stage on a real Flower deployment (SuperLink, SuperNodes and ``flwr run`` as
processes on 127.0.0.1), the Flower app it writes, and its one-line refusals."""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from conftest import load_json, tessera
from tessera.core.errors import ConfigError

#: The smallest real federation: the tiny random-weight model, 64 training sentences, 2 nodes, 2 rounds.
SMALL = [
    "experiment=smoke",
    "aggregator=fedavg",
    "federated.clients=2",
    "federated.rounds=2",
    "data.limit_train=64",
    "data.limit_eval=64",
    "trainer.num_threads=1",
]


def flower_processes_under(root: Path) -> list[str]:
    """The command lines of live processes whose ``FLWR_HOME`` lies under ``root`` (the deployment's)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        homes = [e[len(b"FLWR_HOME=") :].decode(errors="replace") for e in environ if e.startswith(b"FLWR_HOME=")]
        if any(Path(home).is_relative_to(root) for home in homes):
            found.append(cmdline)
    return found


def close(a: float, b: float, relative: float = 1e-3) -> bool:
    return math.isclose(a, b, rel_tol=relative, abs_tol=1e-6)


@pytest.mark.slow
def test_a_two_node_federation_on_loopback_is_a_complete_run_like_the_in_process_one(tmp_path):
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tessera.core.data import load_splits

    scratch, deployed, in_process = tmp_path / "tmp", tmp_path / "deployed", tmp_path / "in-process"
    scratch.mkdir()
    started = time.perf_counter()
    result = tessera("federate", *SMALL, f"hydra.run.dir={deployed}", env={"TMPDIR": str(scratch)}, timeout=1200)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"complete: {deployed}" in result.stdout
    assert "Successfully started run" in result.stderr  # it went through flwr run and a SuperLink
    print(f"2 nodes x 2 rounds on a Flower deployment: {seconds:.0f} s")

    # Every Flower process is gone and the temporary FLWR_HOME / app directory removed.
    assert flower_processes_under(scratch) == []
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in (deployed / "flower").iterdir()) == [
        "superlink.log",
        "supernode-0.log",
        "supernode-1.log",
    ]

    # A complete run: status, metrics with both rounds from both nodes, an export that transformers loads.
    assert load_json(deployed / "run.json")["status"] == "complete"
    metrics = load_json(deployed / "metrics.json")
    rounds = metrics["federated"]["rounds"]
    assert [(r["round"], r["clients"], r["answered"], r["lost"]) for r in rounds] == [(1, 2, 2, 0), (2, 2, 2, 0)]
    assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in rounds)
    assert (deployed / "rounds").is_dir() and (deployed / ".hydra" / "config.yaml").is_file()
    cfg = OmegaConf.load(deployed / ".hydra" / "config.yaml")
    test = load_splits(cfg.data).test
    model = AutoModelForSequenceClassification.from_pretrained(deployed / "export").eval()
    tokenizer = AutoTokenizer.from_pretrained(deployed / "export")
    batch = tokenizer(
        [e["text"] for e in test], truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    accuracy = sum(p == e["label"] for p, e in zip(predicted, test)) / len(test)
    assert abs(accuracy - metrics["test"]["accuracy"]) <= 1 / len(test) + 1e-9

    # The same federation in process: the same rounds, up to float rounding (the clients train in other processes).
    result = tessera("train", *SMALL, f"hydra.run.dir={in_process}")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = load_json(in_process / "metrics.json")
    for deployed_round, reference_round in zip(rounds, reference["federated"]["rounds"], strict=True):
        assert close(deployed_round["train"]["train_loss"], reference_round["train"]["train_loss"])
        assert close(deployed_round["validation"]["loss"], reference_round["validation"]["loss"])
        assert deployed_round["bytes_sent"] == reference_round["bytes_sent"]
    assert close(metrics["test"]["loss"], reference["test"]["loss"])
    assert abs(metrics["test"]["accuracy"] - reference["test"]["accuracy"]) <= 1 / len(test) + 1e-9


def free_port() -> int:
    with socket.socket() as found:
        found.bind(("127.0.0.1", 0))
        return found.getsockname()[1]


def test_an_unreachable_superlink_is_one_line_within_the_connect_timeout():
    port = free_port()  # nothing listens there
    started = time.perf_counter()
    result = tessera(
        "federate", "--superlink", f"127.0.0.1:{port}", "--insecure", "--connect-timeout", "1", *SMALL, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot reach the SuperLink's Control API at 127.0.0.1:{port}"
    )
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--insecure"], "--insecure and --root-certificates go with --superlink"),
        (["--superlink", "localhost"], "--superlink localhost: give HOST:PORT"),
        (["--superlink", "h:9093", "--root-certificates", "/no/such.pem"], "--root-certificates /no/such.pem: no such"),
        (["--superlink", "h:9093", "--insecure", "--root-certificates", "/x.pem"], "exclude each other"),
    ],
)
def test_bad_connection_options_are_one_line(arguments, message, capsys):
    from tessera.core.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["federate", *arguments, *SMALL])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["federated.dropout=0.2"], "federated.dropout=0.2 simulates faults on the in-process grid only"),
        (
            ["federated.attack=alie", "federated.attackers=0.4", "federated.clients=5"],
            "federated.attack=alie computes its vector",
        ),
    ],
)
def test_what_only_the_in_process_grid_can_do_is_refused_on_a_deployment(overrides, message, capsys):
    from tessera.core.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["federate", *SMALL, *overrides])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def context(node_config: dict) -> Context:
    return Context(1, 7, node_config, RecordDict(), {})


@pytest.mark.parametrize(
    "node_config, message",
    [
        ({"partition-id": 0, "num-partitions": 3}, "num-partitions=3, but the run has federated.clients=2"),
        ({"partition-id": 2, "num-partitions": 2}, "partition-id=2: it must be in 0..1"),
        ({"partition-id": 0}, "no num-partitions in its node config"),
    ],
)
def test_a_supernode_whose_partitions_do_not_fit_the_run_is_refused(node_config, message):
    from tessera.federated.app import node_partition

    with pytest.raises(ConfigError, match=message):
        node_partition(context(node_config), clients=2)
    assert node_partition(context({"partition-id": 1, "num-partitions": 2}), clients=2) == 1


def test_the_app_directory_is_a_flower_app_that_carries_the_config(tmp_path, monkeypatch):
    """The pyproject.toml passes Flower's own validation (the components import), builds into a FAB and gives
    the ServerApp / ClientApp the config and run directory through the run config."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import get_fused_config_from_dir

    from tessera.federated.app import CONFIG_KEY, RUN_DIR_KEY, load_config
    from tessera.federated.deploy import app_pyproject, connection_toml

    text = "federated:\n  clients: 2\ndata:\n  path: \"a b.csv\"  # quoted: 'x'\n"
    (tmp_path / "pyproject.toml").write_text(app_pyproject(text, "/runs/r1"))
    config, _ = load_and_validate(tmp_path / "pyproject.toml", check_module=True)
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "tessera.federated.app:serverapp"
    assert build_fab_from_disk(tmp_path)[:2] == b"PK"
    run_config = get_fused_config_from_dir(tmp_path, {})
    assert run_config[RUN_DIR_KEY] == "/runs/r1"
    assert load_config(run_config[CONFIG_KEY]).data.path == "a b.csv"

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(connection_toml("10.0.0.1:9093", False, tmp_path / "ca.pem"))
    from flwr.cli.flower_config import read_superlink_connection

    connection = read_superlink_connection(None)
    assert (connection.address, connection.insecure) == ("10.0.0.1:9093", False)
    assert connection.root_certificates == str(tmp_path / "ca.pem")
    assert os.path.isabs(connection.root_certificates)
