"""A run killed with SIGKILL mid-training resumes from its checkpoint to the same result as an uninterrupted run."""

import json

import numpy as np
from conftest import load_json, make_plugin, tessera

KILLER = """
import os, signal
from tessera import hookimpl

@hookimpl
def tessera_step_end(run, step, metrics):
    if step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
"""

RUN = ["experiment=smoke", "data.limit_train=192", "trainer.epochs=2", "trainer.checkpoint_every=5"]


def outcome(run_dir):
    metrics = load_json(run_dir / "metrics.json")
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [step["loss"] for step in metrics["train"]], np.array([row["probabilities"] for row in rows])


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    plugin_dir = make_plugin(tmp_path / "site", "killer", KILLER)
    env = {"PYTHONPATH": str(plugin_dir), "KILL_AT_STEP": "17"}  # 12 steps an epoch: dies in epoch 2
    killed = tmp_path / "killed"
    first = tessera("train", *RUN, f"hydra.run.dir={killed}", env=env)
    assert first.returncode == -9, first.stderr[-2000:]
    assert load_json(killed / "run.json")["status"] == "running"
    assert not (killed / "metrics.json").exists() and not (killed / "export").exists()
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step-0000015"]

    resumed = tessera("train", *RUN, "resume=true", f"hydra.run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = tessera("train", *RUN, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-2000:]

    resumed_losses, resumed_probabilities = outcome(killed)
    straight_losses, straight_probabilities = outcome(tmp_path / "straight")
    assert len(resumed_losses) == len(straight_losses) == 24
    np.testing.assert_allclose(resumed_losses, straight_losses, rtol=1e-6)
    np.testing.assert_allclose(resumed_probabilities, straight_probabilities, atol=1e-6)


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path):
    run_dir = tmp_path / "run"
    assert tessera("train", *RUN, f"hydra.run.dir={run_dir}").returncode == 0
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    result = tessera("train", *RUN[:-2], "trainer.epochs=3", "resume=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "trainer.epochs: 2 -> 3" in result.stderr
    assert "resume with the same overrides as the original run" in result.stderr
