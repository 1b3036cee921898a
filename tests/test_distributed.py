"""Training on two processes (DDP over gloo on the CPU, under torchrun): the batches are shared out, both ranks end
with the same weights, the result equals one process at the same effective batch, a killed rank fails the job with
a clear message and a resumable checkpoint; bad settings are refused before any work."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import load_json, make_plugin, plugins, tessera
from tessera.core.batching import batch_order
from tessera.core.cli import validate
from tessera.core.errors import ConfigError, IncompatibleError

#: Each rank records a digest of its trainable weights after the last step; one rank can be killed at a step.
RANK_PROBE = """
import hashlib, json, os, signal
from pathlib import Path
from tessera import hookimpl

@hookimpl
def tessera_before_optimizer_step(run, model, step):
    run.state["probe.model"] = model

@hookimpl
def tessera_step_end(run, step, metrics):
    rank = os.environ.get("RANK", "0")
    if rank == os.environ.get("KILL_RANK") and step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    if step == run.total_steps:
        digest = hashlib.sha256()
        for name, parameter in sorted(run.state["probe.model"].named_parameters()):
            if parameter.requires_grad:
                digest.update(name.encode() + parameter.detach().float().cpu().numpy().tobytes())
        Path(os.environ["DIGEST_DIR"], f"rank-{rank}.txt").write_text(digest.hexdigest())
"""

#: No dropout and fp32, so that one process and two processes at the same effective batch compute the same steps.
EXACT = [
    "experiment=smoke",
    "trainer.precision=fp32",
    "trainer.checkpoint_every=5",
    "adapter.lora.dropout=0",
    "+model.config_overrides.hidden_dropout_prob=0",
    "+model.config_overrides.attention_probs_dropout_prob=0",
]
TWO = [*EXACT, "trainer.processes=2", "trainer.batch_size=8"]


def probe_env(tmp_path, name: str, **extra) -> dict:
    site = make_plugin(tmp_path / f"site-{name}", "probe", RANK_PROBE)
    digests = tmp_path / f"digests-{name}"
    digests.mkdir()
    return {"PYTHONPATH": str(site), "DIGEST_DIR": str(digests), "KILL_AT_STEP": "-1", **extra}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """``EXACT`` on one process, batch 16."""
    tmp = tmp_path_factory.mktemp("one")
    result = tessera("train", *EXACT, f"hydra.run.dir={tmp / 'run'}", env=probe_env(tmp, "one"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """``TWO`` with rank 1 killed at step 12 (checkpoint at step 10), then resumed: ``(first run, resumed run,
    digest dir of the resumed run, run dir)``."""
    tmp = tmp_path_factory.mktemp("two")
    run_dir = tmp / "run"
    killed = tessera(
        "train", *TWO, f"hydra.run.dir={run_dir}", env=probe_env(tmp, "killed", KILL_RANK="1", KILL_AT_STEP="12")
    )
    killed_status = load_json(run_dir / "run.json")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    env = probe_env(tmp, "resumed")
    resumed = tessera("train", *TWO, "resume=true", f"hydra.run.dir={run_dir}", env=env)
    return killed, killed_status, checkpoints, resumed, env["DIGEST_DIR"], run_dir


def test_batches_are_shared_out_once_per_epoch():
    items = [{"input_ids": [0] * (1 + i % 7)} for i in range(37)]
    for group in (False, True):
        single = batch_order(items, 8, 3, 1, group)
        shares = [batch_order(items, 4, 3, 1, group, processes=2, rank=r) for r in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == len(single)
        assert all(len(a) == len(b) for a, b in zip(*shares))
        seen = sorted(i for share in shares for batch in share for i in batch)
        assert set(seen) == set(range(37)) and len(seen) == 38  # one item repeated to fill the last step
        exact = [batch_order(items[:36], 4, 3, 1, group, processes=2, rank=r) for r in (0, 1)]
        merged = [sorted(a + b) for a, b in zip(*exact)]
        assert merged == [sorted(batch) for batch in batch_order(items[:36], 8, 3, 1, group)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.processes=0"], "trainer.processes=0 must be at least 1"),
        ([f"trainer.processes={(os.cpu_count() or 1) + 1}"], "CPU cores: use at most"),
        (["trainer.strategy=fsdp", "trainer.device=cpu"], "trainer.strategy=fsdp needs CUDA GPUs"),
        (["trainer.strategy=zero"], "trainer.strategy=zero is not one of ddp, fsdp"),
    ],
)
def test_bad_process_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(["experiment=smoke", *overrides], plugins())


def test_a_process_count_other_than_the_launchers_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer.processes=3 but the launcher started 2 processes"):
        validate(["experiment=smoke", "trainer.processes=3"], plugins())


def test_federated_stages_are_refused_on_several_processes():
    with pytest.raises(IncompatibleError, match="aggregator=fedavg cannot be combined with trainer.processes=2"):
        validate(["experiment=smoke", "aggregator=fedavg", "trainer.processes=2"], plugins())


def test_killing_a_rank_fails_the_job_and_leaves_a_checkpoint(killed_then_resumed):
    killed, status, checkpoints, *_ = killed_then_resumed
    assert killed.returncode == 2, killed.stderr[-3000:]
    error = killed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: trainer.processes=2: rank 1 was killed by SIGKILL; torchrun stopped the other")
    assert "resume=true" in error and "checkpoints/step-0000010" in error
    assert status["status"] == "failed" and "rank 1 was killed by SIGKILL" in status["error"]
    assert checkpoints == ["step-0000010"]


def test_two_processes_resume_to_the_result_of_one(killed_then_resumed, one_process):
    *_, resumed, digests, run_dir = killed_then_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ranks = {path.name: path.read_text() for path in Path(digests).iterdir()}
    assert set(ranks) == {"rank-0.txt", "rank-1.txt"} and len(set(ranks.values())) == 1
    metrics, reference = load_json(run_dir / "metrics.json"), load_json(one_process / "metrics.json")
    assert metrics["training"] == {"processes": 2, "strategy": "ddp", "effective_batch_size": 16}
    assert reference["training"] == {"processes": 1, "strategy": "none", "effective_batch_size": 16}
    assert load_json(run_dir / "run.json")["training"]["effective_batch_size"] == 16
    assert len(metrics["train"]) == len(reference["train"]) == 20
    np.testing.assert_allclose(
        [s["loss"] for s in metrics["train"]], [s["loss"] for s in reference["train"]], rtol=1e-4
    )
    assert metrics["test"]["accuracy"] == pytest.approx(reference["test"]["accuracy"], abs=0.02)
    probabilities = [
        np.array([json.loads(line)["probabilities"] for line in (d / "predictions.jsonl").read_text().splitlines()])
        for d in (run_dir, one_process)
    ]
    np.testing.assert_allclose(*probabilities, atol=1e-3)
    assert "effective batch size 16 (batch_size 8 x 2 processes" in (run_dir / "train.log").read_text()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in one_process.iterdir())


@pytest.mark.slow
def test_the_training_families_run_together_on_two_processes(tmp_path):
    """An adversary, an augmenter, knowledge injection and an adapter that allocates its ranks from the gradients
    (AdaLoRA), in one run on two processes: both ranks end with the same weights."""
    env = probe_env(tmp_path, "families")
    run_dir = tmp_path / "run"
    families = ["adversary=fgm", "augment=eda", "kg=text_injection", "adapter=adalora"]
    two = [
        "experiment=smoke",
        "trainer.processes=2",
        "trainer.batch_size=8",
        "data.limit_train=96",
        "data.limit_eval=48",
    ]
    result = tessera("train", *two, *families, f"hydra.run.dir={run_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [path.read_text() for path in Path(env["DIGEST_DIR"]).iterdir()]
    assert len(digests) == 2 and len(set(digests)) == 1
    assert load_json(run_dir / "run.json")["composition"] == {
        "objective": ["classification"],
        "adapter": ["adalora"],
        "augment": ["eda"],
        "adversary": ["fgm"],
        "kg": ["text_injection"],
    }
    assert (run_dir / "augment" / "eda.json").is_file() and (run_dir / "export" / "config.json").is_file()
