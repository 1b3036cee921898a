"""A run killed with SIGKILL mid-training resumes from its checkpoint to the same result as an uninterrupted run;
resume only ever loads complete, readable checkpoints, and a checkpoint holds no pickle."""

import json
import shutil

import numpy as np
import pytest

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
#: Keeps the checkpoints of steps 10, 12 (end of epoch 1) and 15 when killed at step 17.
KEEP_THREE = [*RUN, "trainer.keep_checkpoints=3"]
CHECKPOINT_FILES = {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "complete.json"}


def outcome(run_dir):
    metrics = load_json(run_dir / "metrics.json")
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [step["loss"] for step in metrics["train"]], np.array([row["probabilities"] for row in rows])


def assert_same_outcome(run_dir, straight_dir):
    resumed_losses, resumed_probabilities = outcome(run_dir)
    straight_losses, straight_probabilities = outcome(straight_dir)
    assert len(resumed_losses) == len(straight_losses) == 24
    np.testing.assert_allclose(resumed_losses, straight_losses, rtol=1e-6)
    np.testing.assert_allclose(resumed_probabilities, straight_probabilities, atol=1e-6)
    resumed, reference = (load_json(directory / "metrics.json")["test"] for directory in (run_dir, straight_dir))
    assert resumed.pop("confusion_matrix") == reference.pop("confusion_matrix")
    assert resumed == pytest.approx(reference, abs=1e-6)


def kill_at(tmp_path, step: int, run: list[str], name: str = "killed"):
    """Run ``run`` in ``tmp_path / name`` and SIGKILL it at the end of optimizer step ``step``."""
    plugin_dir = make_plugin(tmp_path / "site", "killer", KILLER)
    killed = tmp_path / name
    env = {"PYTHONPATH": str(plugin_dir), "KILL_AT_STEP": str(step)}
    first = tessera("train", *run, f"hydra.run.dir={killed}", env=env)
    assert first.returncode == -9, first.stderr[-2000:]
    return killed


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of ``RUN``."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    result = tessera("train", *RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def killed_with_three(tmp_path_factory):
    """A run of ``KEEP_THREE`` killed at step 17: complete checkpoints at steps 10, 12 and 15."""
    killed = kill_at(tmp_path_factory.mktemp("three"), 17, KEEP_THREE)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "step-0000010",
        "step-0000012",
        "step-0000015",
    ]
    return killed


def resume_copy(killed, tmp_path, damage):
    """Copy the killed run, let ``damage(checkpoints dir)`` break it, resume it; return (run dir, its log)."""
    run_dir = tmp_path / "run"
    shutil.copytree(killed, run_dir)
    damage(run_dir / "checkpoints")
    resumed = tessera("train", *KEEP_THREE, "resume=true", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return run_dir, resumed.stdout  # Hydra logs to stdout


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, straight):
    killed = kill_at(tmp_path, 17, RUN)  # 12 steps an epoch: dies in epoch 2
    assert load_json(killed / "run.json")["status"] == "running"
    assert not (killed / "metrics.json").exists() and not (killed / "export").exists()
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step-0000015"]

    resumed = tessera("train", *RUN, "resume=true", f"hydra.run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = [line for line in resumed.stdout.splitlines() if "resuming from" in line]
    assert len(lines) == 1 and lines[0].endswith("resuming from checkpoints/step-0000015 (epoch 2 of 2, step 15 of 24)")
    assert_same_outcome(killed, straight)


def test_a_stale_partial_checkpoint_is_ignored_and_removed(killed_with_three, tmp_path, straight):
    def interrupt_the_last_write(checkpoints):
        # What a kill inside the write of step 15 leaves: its directory under the temporary name, files truncated.
        partial = checkpoints / "step-0000015.partial"
        (checkpoints / "step-0000015").rename(partial)
        for file in partial.iterdir():
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    run_dir, log = resume_copy(killed_with_three, tmp_path, interrupt_the_last_write)
    assert "resuming from checkpoints/step-0000012 (epoch 2 of 2, step 12 of 24)" in log
    assert "skipping" not in log
    assert not (run_dir / "checkpoints" / "step-0000015.partial").exists()
    assert_same_outcome(run_dir, straight)


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one(killed_with_three, tmp_path, straight):
    def garble_the_last_state(checkpoints):
        state = checkpoints / "step-0000015" / "state.json"
        state.write_bytes(b"#" * state.stat().st_size)  # same size: only parsing can tell

    run_dir, log = resume_copy(killed_with_three, tmp_path, garble_the_last_state)
    warnings = [line for line in log.splitlines() if "skipping the unreadable checkpoint" in line]
    assert len(warnings) == 1 and "checkpoints/step-0000015" in warnings[0]
    assert "resuming from checkpoints/step-0000012 (epoch 2 of 2, step 12 of 24)" in log
    assert_same_outcome(run_dir, straight)


def test_a_run_without_a_readable_checkpoint_starts_over(killed_with_three, tmp_path, straight):
    def truncate_every_weight_file(checkpoints):
        for trainable in checkpoints.glob("step-*/trainable.safetensors"):
            trainable.write_bytes(trainable.read_bytes()[:100])

    run_dir, log = resume_copy(killed_with_three, tmp_path, truncate_every_weight_file)
    assert log.count("skipping the unreadable checkpoint") == 3
    assert "no checkpoint in checkpoints reads back: starting from step 0" in log
    assert "resuming from" not in log
    assert_same_outcome(run_dir, straight)


def test_a_checkpoint_holds_safetensors_and_json_only(straight):
    from safetensors.torch import load_file

    (checkpoint,) = (straight / "checkpoints").iterdir()
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    for file in checkpoint.iterdir():  # each parses as safetensors or as JSON: none is a pickle
        if file.suffix == ".safetensors":
            assert load_file(file)
        else:
            json.loads(file.read_text())
    sizes = load_json(checkpoint / "complete.json")
    assert sizes == {p.name: p.stat().st_size for p in checkpoint.iterdir() if p.name != "complete.json"}


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path):
    run_dir = tmp_path / "run"
    assert tessera("train", *RUN, f"hydra.run.dir={run_dir}").returncode == 0
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    result = tessera("train", *RUN[:-2], "trainer.epochs=3", "resume=true", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "trainer.epochs: 2 -> 3" in result.stderr
    assert "resume with the same overrides as the original run" in result.stderr


def test_an_export_removes_what_a_killed_export_left_behind(tmp_path):
    from tessera.core.files import atomic_directory

    left = tmp_path / ".export.abc123"
    (left / "adapters").mkdir(parents=True)
    with atomic_directory(tmp_path / "export", owned=True) as partial:
        (partial / "config.json").write_text("{}")
    assert not left.exists() and (tmp_path / "export" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_settings_that_a_later_tessera_added_do_not_stop_a_resume(tmp_path):
    from tessera.core.errors import ConfigError
    from tessera.core.trainer import refuse_another_config

    refuse_another_config(tmp_path, {"trainer.epochs": 3}, {"trainer.epochs": 3, "tune.trials": 20})
    with pytest.raises(ConfigError, match=r"trainer.epochs: 3 -> 4"):
        refuse_another_config(tmp_path, {"trainer.epochs": 3}, {"trainer.epochs": 4, "tune.trials": 20})
