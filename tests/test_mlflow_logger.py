"""The MLflow logger (``logger=mlflow``): a real run recorded in a real SQLite tracking store, read back with
MLflow's client; the refusals before any work."""

import sys

import pytest

from conftest import load_json, plugins, tessera
from tessera.core.cli import compose_config
from tessera.core.errors import ConfigError
from tessera.core.run import compose


def composition(*overrides):
    return compose(compose_config(["experiment=smoke", *overrides], plugins()), plugins())


def test_a_run_is_recorded_in_mlflow_with_params_metrics_and_artifacts(tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "data.limit_train=64",
        "logger=mlflow",
        "logger.mlflow.experiment=smoke-tests",
        f"hydra.run.dir={run_dir}",
        env={"MLFLOW_TRACKING_URI": store},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "tensorboard").is_dir()  # TensorBoard keeps logging beside MLflow

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("smoke-tests")
    assert experiment.artifact_location == (tmp_path / "tracking" / "artifacts").as_uri()
    (recorded,) = client.search_runs([experiment.experiment_id])
    assert recorded.info.status == "FINISHED" and recorded.info.run_name == "run"
    assert recorded.data.tags["tessera.run_dir"] == str(run_dir.resolve())
    assert recorded.data.tags["tessera.export_dir"] == str((run_dir / "export").resolve())
    params = recorded.data.params
    assert params["model.name"] == "tiny" and params["data.limit_train"] == "64"
    assert params["trainer.learning_rate"] == "0.0005" and params["adapter.lora.r"] == "16"

    metrics = load_json(run_dir / "metrics.json")
    steps = client.get_metric_history(recorded.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in steps] == [(s["step"], pytest.approx(s["loss"])) for s in metrics["train"]]
    (epoch,) = client.get_metric_history(recorded.info.run_id, "validation/accuracy")
    assert epoch.step == 1
    assert recorded.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert "test/confusion_matrix" not in recorded.data.metrics

    top = {a.path for a in client.list_artifacts(recorded.info.run_id)}
    assert {"report.md", "metrics.json", "run.json", "config", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(recorded.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/roc_curve.png"}
    report = client.download_artifacts(recorded.info.run_id, "report.md", str(tmp_path / "downloaded"))
    assert open(report).read() == (run_dir / "report.md").read_text()


def test_logger_mlflow_without_mlflow_is_refused_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow-skinny were not installed
    with pytest.raises(ConfigError) as caught:
        composition("logger=mlflow")
    assert str(caught.value) == (
        "logger=mlflow needs MLflow, which is not installed: pip install 'tessera[mlflow]' (mlflow-skinny)"
    )
    assert not composition().selected("logger")  # off by default: nothing needs MLflow


def test_mlflow_file_store_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"^logger.mlflow.tracking_uri=file:.*MLflow's file store is not supported"):
        composition("logger=mlflow", f"logger.mlflow.tracking_uri=file:{tmp_path}/mlruns")
    assert not (tmp_path / "mlruns").exists()


def test_a_tracking_database_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError) as caught:
        composition("logger=mlflow", f"logger.mlflow.tracking_uri={tmp_path / 'a_file' / 'mlflow.db'}")
    assert str(caught.value) == (
        f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}: {tmp_path / 'a_file'} is not a "
        "writable directory: point it at a SQLite file in a writable directory"
    )


def test_an_ensemble_stage_may_log_to_mlflow():
    from tessera.core import job

    stages = (
        "{name:a,init:base},{name:b,init:base,overrides:['trainer.seed=2']},"
        "{name:e,init:base,overrides:['ensemble=average','adapter=none']}"
    )
    overrides = ["experiment=smoke", "logger=mlflow", f"stages=[{stages}]"]
    planned = job.plan(compose_config(overrides, plugins()), overrides, lambda o: compose_config(o, plugins()), None)
    job.validate(planned, plugins())  # a logger trains nothing: no "an ensemble stage trains nothing"
