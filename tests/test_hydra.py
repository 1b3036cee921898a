"""Hydra's own command line works as Hydra users expect: run directories, sweeps, config printing."""

from conftest import load_json, tessera


def test_multirun_sweep_runs_every_combination(tmp_path):
    sweep = tmp_path / "sweep"
    result = tessera(
        "train", "-m", "experiment=smoke", "data.limit_train=64", "adapter=lora,none", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "run.json").is_file())
    assert len(runs) == 2
    compositions = [load_json(run / "run.json")["composition"] for run in runs]
    assert {"objective": ["classification"], "adapter": ["lora"]} in compositions
    assert {"objective": ["classification"]} in compositions
    assert all(load_json(run / "run.json")["status"] == "complete" for run in runs)


def test_cfg_job_prints_the_composed_config_without_running():
    result = tessera("train", "experiment=smoke", "adapter.lora.r=4", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "r: 4" in result.stdout and "name: tiny" in result.stdout


def test_hydra_help_lists_the_config_groups():
    result = tessera("train", "--help")
    assert result.returncode == 0
    for group in ("model", "data", "adapter", "objective", "experiment", "aggregator", "kg"):
        assert f"{group}:" in result.stdout
