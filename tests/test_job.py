"""The job engine: stages planned and validated together, started from any earlier stage by name, every way a job
ends written to ``run.json``, and ``resume=true`` continuing from the stage that stopped."""

import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, load_json, make_plugin, plugins, tessera
from tessera.core import job
from tessera.core.cli import compose_config
from tessera.core.errors import ConfigError

SMOKE = ["experiment=smoke", "data.limit_train=32", "data.limit_eval=16"]
TWO_STAGES = "stages=[{name:first,init:base},{name:second,init:first},{name:third,init:first}]"


def planned(stages: str) -> list[job.Stage]:
    overrides = [*SMOKE, stages]
    return job.plan(compose_config(overrides, plugins()), overrides, lambda o: compose_config(o, plugins()), None)


def test_a_single_run_is_a_job_of_one_stage_in_the_run_directory(tmp_path):
    cfg = compose_config(SMOKE, plugins())
    (stage,) = job.plan(cfg, SMOKE, lambda o: compose_config(o, plugins()), tmp_path)
    assert stage.init == "base" and stage.dir == tmp_path


def test_a_stage_starts_from_any_earlier_stage_by_name():
    stages = planned(TWO_STAGES)
    assert [(stage.name, stage.init) for stage in stages] == [
        ("first", "base"),
        ("second", "first"),
        ("third", "first"),
    ]
    assert [s.init for s in planned("stages=[{name:a,init:base},{name:b},{name:c,init:previous}]")] == [
        "base",
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    "stages, message",
    [
        ("stages=[{name:a}]", "stage 'a' is the first stage: it cannot start from a previous one (init: base)"),
        (
            "stages=[{name:a,init:base},{name:b,init:c},{name:c,init:base}]",
            "stage 'b' has init: c, which runs after it: use base, previous or an earlier stage (a)",
        ),
        (
            "stages=[{name:a,init:base},{name:b,init:teacher}]",
            "stage 'b' has init: teacher, which is not a stage of this job: use base, previous or an earlier stage (a)",
        ),
        ("stages=[{name:a,init:base},{name:a,init:base}]", "two stages are named 'a'"),
        ("stages=[{name:'a/b',init:base}]", "stage name 'a/b' is not a directory name"),
    ],
)
def test_bad_stage_references_are_refused_in_one_line(stages, message):
    with pytest.raises(ConfigError) as caught:
        planned(stages)
    assert message in str(caught.value) and "\n" not in str(caught.value)


FAILS_IN_SECOND_STAGE = """
from tessera import hookimpl

@hookimpl
def tessera_step_end(run, step):
    if run.dir.name == "second" and step == 2:
        raise RuntimeError("the GPU caught fire")
"""


def test_a_failed_stage_is_recorded_and_resume_continues_from_it(tmp_path):
    make_plugin(tmp_path / "site", "saboteur", FAILS_IN_SECOND_STAGE)
    run = tmp_path / "run"
    args = ["train", *SMOKE, TWO_STAGES, "trainer.checkpoint_every=1", f"hydra.run.dir={run}"]
    failed = tessera(*args, env={"PYTHONPATH": str(tmp_path / "site")})
    assert failed.returncode != 0
    status = load_json(run / "run.json")
    assert status["status"] == "failed" and status["stage"] == "second"
    assert status["error"] == "RuntimeError: the GPU caught fire"
    assert status["stages"] == {"first": "complete", "second": "failed", "third": "planned"}
    assert load_json(run / "stages" / "second" / "run.json")["status"] == "failed"
    first_export = (run / "stages" / "first" / "export" / "model.safetensors").stat().st_mtime_ns

    resumed = tessera(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage first is already complete: skipped" in resumed.stdout + resumed.stderr
    status = load_json(run / "run.json")
    assert status["status"] == "complete" and set(status["stages"].values()) == {"complete"}
    assert (run / "stages" / "first" / "export" / "model.safetensors").stat().st_mtime_ns == first_export
    assert list(load_json(run / "metrics.json")["stages"]) == ["first", "second", "third"]
    assert load_json(run / "stages" / "third" / "run.json")["status"] == "complete"


def test_a_terminated_run_records_what_resume_will_do(tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "tessera",
        "train",
        "experiment=smoke",
        "trainer.epochs=3",
        "trainer.checkpoint_every=2",
        f"hydra.run.dir={run}",
    ]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((run / "checkpoints").glob("step-*[0-9]")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) != 0
    status = load_json(run / "run.json")
    assert status["status"] == "interrupted", status
    assert status["resume"].startswith(
        "rerun the same command with resume=true: it continues from its last checkpoint, step-"
    )
    resumed = tessera(*args[3:], "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_json(run / "run.json")["status"] == "complete"
    assert len(load_json(run / "metrics.json")["train"]) == 60
