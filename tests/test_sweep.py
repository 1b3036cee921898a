"""Sweeps: `tessera train -m` in parallel through Hydra's joblib launcher, each job with its share of the cores, and
the summary every sweep writes at its end (the best job marked, failed jobs reported without stopping the others)."""

import json
import os

import pytest
from omegaconf import OmegaConf

from conftest import load_json, make_plugin
from tessera.core.cli import main
from tessera.core.sweep import jobs_at_a_time

#: A third-party plugin whose run-start hook records the process a job ran in and its torch threads: the joblib
#: workers must discover it themselves.
PROCESS_PLUGIN = """
import json, os
from tessera import hookimpl

@hookimpl
def tessera_run_start(run):
    import torch
    record = {"pid": os.getpid(), "threads": torch.get_num_threads(), "num_threads": run.cfg.trainer.num_threads}
    (run.dir / "process.json").write_text(json.dumps(record))
"""

QUICK = ["experiment=smoke", "adapter=none", "data.limit_train=32", "data.limit_eval=32", "trainer.max_steps=2"]


def test_a_joblib_sweep_runs_its_jobs_in_parallel_processes_and_summarises_them(tmp_path, monkeypatch):
    from joblib import cpu_count

    site = make_plugin(tmp_path / "site", "process", PROCESS_PLUGIN)
    monkeypatch.syspath_prepend(str(site))  # this process discovers the plugin, and so do the workers it starts
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.chdir(tmp_path)
    argv = [
        "train",
        "-m",
        *QUICK,
        "trainer.learning_rate=0.01,0.0001",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    assert main(argv) == 0
    (sweep,) = (tmp_path / "multirun").glob("*/*")  # Hydra's default sweep directory: multirun/<date>/<time>
    processes = [load_json(sweep / str(job) / "process.json") for job in (0, 1)]
    assert processes[0]["pid"] != processes[1]["pid"] and os.getpid() not in {p["pid"] for p in processes}
    threads = max(1, cpu_count() // 2)
    assert [p["num_threads"] for p in processes] == [threads, threads]
    assert [p["threads"] for p in processes] == [threads, threads]

    summary = load_json(sweep / "summary.json")
    assert summary["jobs"] == 2 and summary["complete"] == 2 and summary["failed"] == 0
    assert summary["metric"] == {"name": "accuracy", "higher_is_better": True}
    rows = summary["rows"]
    assert [row["job"] for row in rows] == [0, 1]
    assert [row["status"] for row in rows] == ["complete", "complete"]
    assert ["trainer.learning_rate=0.01" in row["overrides"] for row in rows] == [True, False]
    for row in rows:
        test = load_json(sweep / str(row["job"]) / "metrics.json")["test"]
        assert row["test"] == {k: v for k, v in test.items() if k != "confusion_matrix"}
    accuracies = [row["test"]["accuracy"] for row in rows]
    best = max(range(2), key=lambda job: (accuracies[job], -job))
    assert summary["best"] == best and [row["best"] for row in rows] == [job == best for job in (0, 1)]
    markdown = (sweep / "summary.md").read_text()
    assert f"**{best} (best)**" in markdown and "Best by test accuracy (higher is better)" in markdown
    assert "| trainer.learning_rate=0.0001 | complete |" in markdown


def test_a_failed_job_does_not_stop_the_sweep_and_fails_the_command(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_status:
        # The first job cannot build its model (64 hidden units over 3 heads): it fails at run time, after validation.
        main(
            ["train", "-m", *QUICK, "adapter=none", "model.config_overrides.num_attention_heads=3,2",
             f"hydra.sweep.dir={sweep}"]
        )  # fmt: skip
    assert exit_status.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: 1 of 2 jobs failed (job 0): see {sweep / 'summary.md'}"]
    failed, complete = load_json(sweep / "0" / "run.json"), load_json(sweep / "1" / "run.json")
    assert failed["status"] == "failed" and "not a multiple of the number of attention heads" in failed["error"]
    assert complete["status"] == "complete"

    summary = load_json(sweep / "summary.json")
    assert (summary["jobs"], summary["complete"], summary["failed"], summary["best"]) == (2, 1, 1, 1)
    first, second = summary["rows"]
    assert first["status"] == "failed" and first["error"] == failed["error"] and first["test"] == {}
    assert second["best"] and second["dir"] == str(sweep / "1")
    assert OmegaConf.load(sweep / "1" / ".hydra" / "overrides.yaml") == second["overrides"]
    assert "trainer.num_threads" not in json.dumps(summary)  # one job at a time: torch's own threads
    markdown = (sweep / "summary.md").read_text()
    assert "| 0 | model.config_overrides.num_attention_heads=3 | failed: ValueError: The hidden size" in markdown


@pytest.mark.parametrize(
    "n_jobs, jobs, expected", [(None, 4, 1), (2, 4, 2), (8, 3, 3), (-1, 16, 4), (-2, 16, 3), (-9, 16, 1)]
)
def test_jobs_at_a_time_resolves_n_jobs_as_joblib_does(n_jobs, jobs, expected):
    launcher = OmegaConf.create({} if n_jobs is None else {"n_jobs": n_jobs})
    assert jobs_at_a_time(launcher, jobs, cores=4) == expected


def test_threads_per_job_leaves_jobs_that_set_their_threads_alone():
    from joblib import cpu_count

    from tessera.core.sweep import threads_per_job

    unset, set_ = (
        OmegaConf.create({"trainer": {"num_threads": None}}),
        OmegaConf.create({"trainer": {"num_threads": 3}}),
    )
    parallel = OmegaConf.create({"n_jobs": 2})
    assert threads_per_job(parallel, [unset, unset]) == max(1, cpu_count() // 2)
    assert threads_per_job(parallel, [unset, set_]) is None
    assert threads_per_job(OmegaConf.create({}), [unset, unset]) is None  # Hydra's basic launcher: one at a time


@pytest.mark.parametrize(
    "launcher, message",
    [
        (["hydra.launcher.n_jobs=2"], "unknown parameter 'hydra.launcher.n_jobs': valid keys of hydra.launcher are"),
        (["hydra/launcher=jobllib"], "unknown hydra/launcher 'jobllib': choose one of basic, joblib"),
    ],
)
def test_a_bad_launcher_override_is_one_line_before_any_job(tmp_path, capsys, launcher, message):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_status:
        main(["train", "-m", *QUICK, "trainer.seed=1,2", *launcher, f"hydra.sweep.dir={sweep}"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not sweep.exists()
