"""``tessera tune``: Optuna studies over tiny ``tessera train`` runs, with a real SQLite storage in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

optuna = pytest.importorskip("optuna")

#: A tiny run: random-weight model, real tokenizer and sentences, two short epochs.
TINY = [
    "experiment=smoke",
    "data.limit_train=48",
    "data.limit_eval=16",
    "data.max_length=24",
    "trainer.batch_size=8",
    "trainer.epochs=2",
    "trainer.checkpoint_every=0",
]
SPACE = "tune.space={trainer.learning_rate:{type:loguniform,low:1e-4,high:3e-3},adapter.lora.r:[4,8]}"


def tune(*args: str) -> tuple[int, str, str]:
    """Run ``tessera tune ARGS`` in this process through the real entry point: ``(status, stdout, stderr)``."""
    from tessera.core.cli import main

    out, err = sys.stdout, sys.stderr
    try:
        import io

        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        try:
            code = main(["tune", *args])
        except SystemExit as exit:
            code = exit.code
        return code, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdout, sys.stderr = out, err


def study_of(directory: Path, name: str = "tessera"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'study.db'}")


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_a_study_writes_its_database_report_plots_and_the_best_command(tmp_path):
    directory = tmp_path / "study"
    args = [*TINY, "trainer.epochs=1", SPACE, "tune.trials=3", "tune.pruner=none", "tune.seed=0"]
    code, out, err = tune(*args, f"tune.dir={directory}")
    assert code == 0, err[-3000:]
    study = study_of(directory)
    assert states(study) == ["COMPLETE"] * 3
    best = study.best_trial
    command = next(line for line in out.splitlines() if line.startswith("tessera train "))
    assert command.split()[2:] == [*TINY, "trainer.epochs=1", *best.user_attrs["overrides"]]
    assert f"trainer.learning_rate={best.params['trainer.learning_rate']!r}" in command
    for number in range(3):
        run = directory / "trials" / str(number)
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        assert (run / "export" / "config.json").is_file() and (run / ".hydra" / "config.yaml").is_file()
    for plot in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png"):
        assert (directory / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (directory / "tune_report.md").read_text()
    assert command in report and "![Parameter importances](param_importances.png)" in report
    summary = json.loads((directory / "tune.json").read_text())
    assert summary["best"]["number"] == best.number and summary["counts"] == {"complete": 3}
    # The printed command reproduces the best trial's composition.
    from omegaconf import OmegaConf

    from tessera.core.cli import compose_config
    from tessera.tune.trial import REPORTER_PLUGIN  # noqa: F401  (the module the trials ran through)

    saved = OmegaConf.load(Path(best.user_attrs["run_dir"]) / ".hydra" / "config.yaml")
    composed = compose_config(command.split()[2:], __import__("conftest").plugins())
    assert composed.trainer.learning_rate == saved.trainer.learning_rate == best.params["trainer.learning_rate"]
    assert composed.adapter.lora.r == saved.adapter.lora.r == best.params["adapter.lora.r"]


def test_an_unpromising_trial_is_pruned_after_its_first_epoch(tmp_path):
    directory = tmp_path / "study"
    code, out, err = tune(
        *TINY,
        "tune.space={trainer.learning_rate:[1e-7,1.0]}",
        "tune.enqueue=[{trainer.learning_rate:1e-7},{trainer.learning_rate:1.0}]",
        "tune.trials=2",
        "tune.metric=loss",
        "tune.direction=minimize",
        "tune.pruner=median",
        "tune.pruner_startup_trials=1",
        f"tune.dir={directory}",
    )
    assert code == 0, err[-3000:]
    first, second = study_of(directory).get_trials()
    assert (first.state.name, second.state.name) == ("COMPLETE", "PRUNED")
    assert len(first.intermediate_values) == 2 and list(second.intermediate_values) == [1]
    recorded = json.loads((directory / "trials" / "1" / "run.json").read_text())
    assert recorded["status"] == "pruned" and recorded["epochs"] == 1
    assert not (directory / "trials" / "1" / "export").exists()
    assert "| 1 | pruned |" in (directory / "tune_report.md").read_text()


def _tune_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tessera", "tune", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_running(run_dir: Path, process: subprocess.Popen) -> None:
    while True:
        status = run_dir / "run.json"
        if status.is_file() and json.loads(status.read_text()).get("status") == "running":
            return
        if process.poll() is not None:
            pytest.fail(f"tessera tune ended early:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.2)


def test_a_killed_study_continues_where_it_stopped(tmp_path, caplog):
    directory = tmp_path / "study"
    args = [*TINY, "trainer.epochs=1", SPACE, "tune.pruner=none", f"tune.dir={directory}"]
    killed = _tune_process(*args, "tune.trials=2")
    _wait_running(directory / "trials" / "1", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert states(study_of(directory)) == ["COMPLETE", "RUNNING"]
    code, out, err = tune(*args, "tune.trials=2")
    assert code == 0, err[-3000:]
    assert states(study_of(directory)) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "marked failed the trials left running by a killed tessera tune: 1" in caplog.text


def test_two_worker_processes_share_one_study(tmp_path):
    directory = tmp_path / "study"
    args = [*TINY, "trainer.epochs=1", SPACE, "tune.pruner=none", "tune.trials=3", f"tune.dir={directory}"]
    from conftest import plugins
    from tessera.tune.cli import check

    check(args, plugins())  # this process composes and validates as fast as a warm worker: no head start for the other
    other = _tune_process(*args)
    _wait_running(directory / "trials" / "0", other)
    code, out, err = tune(*args)
    assert other.wait(timeout=600) == 0, other.stdout.read()[-3000:]
    assert code == 0, err[-3000:]
    trials = study_of(directory).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {other.pid, os.getpid()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.space={trainer.learnig_rate:[1e-4,1e-3]}", "unknown config key 'trainer.learnig_rate' (did you mean"),
        ("tune.space={adapter.lora.rank:[4,8]}", "unknown config key 'adapter.lora.rank'"),
        ("tune.space={trainer.learning_rate:{type:float,low:1e-3,high:1e-4}}", "empty range (low=0.001 >= high"),
        ("tune.space={adapter.lora.r:[]}", "tune.space.adapter.lora.r has no choices"),
        ("tune.space={adapter.lora.r:{type:categorical,choices:[]}}", "tune.space.adapter.lora.r has no choices"),
        ("tune.space={trainer.learning_rate:{type:normal,low:0,high:1}}", "has type 'normal': choose one of float"),
        ("tune.space={adapter.lora.r:[4,eight]}", "tune.space.adapter.lora.r='eight' does not work"),
        ("tune.storage=nosuchdb://host/db", "tune.storage=nosuchdb://host/db cannot be opened"),
        ("tune.storage=sqlite:////proc/no/such/study.db", "tune.storage=sqlite:////proc/no/such/study.db cannot be"),
        ("tune.pruner=percentile", "tune.pruner=percentile is not one of median, hyperband, none"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, override, message):
    directory = tmp_path / "study"
    base = [*TINY, f"tune.dir={directory}"]
    args = [*base, SPACE, override] if not override.startswith("tune.space=") else [*base, override]
    code, out, err = tune(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (directory / "trials").exists()


def test_a_study_refuses_a_changed_search_space(tmp_path):
    from omegaconf import OmegaConf

    from tessera.tune.space import parse_space
    from tessera.tune.study import open_storage, open_study

    directory = tmp_path / "study"
    storage = open_storage(f"sqlite:///{directory / 'study.db'}", 60)
    tune_cfg = OmegaConf.create({"study": "tessera", "direction": "maximize", "metric": "accuracy", "sampler": "tpe"})
    tune_cfg.update(seed=None, pruner="none", pruner_startup_trials=0, pruner_warmup_epochs=0)
    open_study(storage, tune_cfg, parse_space({"trainer.learning_rate": [1e-4, 1e-3]}))
    code, out, err = tune(*TINY, f"tune.dir={directory}", "tune.space={trainer.learning_rate:[1e-4,1e-3,1e-2]}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "study 'tessera' was created with another search space (changed: trainer.learning_rate)" in err
    code, out, err = tune(*TINY, f"tune.dir={directory}", SPACE.replace("adapter.lora.r:[4,8]", "adapter.lora.r:[4]"))
    assert code == 2 and "changed: adapter.lora.r, trainer.learning_rate" in err
    assert not (directory / "trials").exists()


def test_the_space_reads_the_same_flat_or_as_a_tree_and_spells_its_trials_as_overrides():
    from tessera.tune.space import overrides, parse_space

    flat = parse_space({"trainer.epochs": {"type": "int", "low": 1, "high": 4, "step": 1}, "data.name": ["a", "b c"]})
    tree = parse_space(
        {"trainer": {"epochs": {"type": "int", "low": 1, "high": 4, "step": 1}}, "data.name": ["a", "b c"]}
    )
    assert flat == tree
    assert flat["trainer.epochs"].grid() == [1, 2, 3, 4]
    assert parse_space({"trainer.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}})[
        "trainer.learning_rate"
    ].log
    assert overrides({"trainer.epochs": 2, "data.name": "b c", "trainer.learning_rate": 1e-4}) == [
        "trainer.epochs=2",
        "data.name='b c'",
        "trainer.learning_rate=0.0001",
    ]
