"""MLflow logger (``logger=mlflow``, the optional extra ``tessera[mlflow]``): one MLflow run per tessera run (per
stage of a job) with the composed config flattened into params (``trainer.learning_rate``), training scalars per
step (``train/*``), validation metrics per epoch (``validation/*``), a federation's rounds (``round/*``), the test
and compressed-model metrics (``test/*``, ``compressed/*``), and at the end the run's ``report.md``,
``metrics.json``, ``run.json``, resolved config and plots (PNG) as artifacts, with the run's status.

The tracking store is ``logger.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite database
``$TESSERA_HOME/mlflow/mlflow.db``; a value without ``://`` is a path to a SQLite file. MLflow's file store
(``file:``) is refused: mlflow-skinny only works with a database or a tracking server.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.techniques import Logger, TechniqueConfig

#: What a tessera run's end status is in MLflow.
_STATUS = {"complete": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: The run directory's files logged as artifacts at the end (those that exist), and the artifact directory of each
#: (None: the top); every ``*.png`` goes to ``plots/``.
_ARTIFACTS = {"report.md": None, "metrics.json": None, "run.json": None, ".hydra/config.yaml": "config"}


@dataclass
class MLflowConfig(TechniqueConfig):
    """Where the runs go: a tracking URI (null: ``$MLFLOW_TRACKING_URI``, else ``$TESSERA_HOME/mlflow/mlflow.db``)
    and the experiment's name; ``artifact_location`` is used only when the experiment is created (null: beside a
    SQLite database, ``artifacts/``; the server's default otherwise)."""

    tracking_uri: Optional[str] = None
    experiment: str = "tessera"
    artifact_location: Optional[str] = None
    #: The MLflow run's name; null: the run directory's name.
    run_name: Optional[str] = None


def tracking_uri(given: str | None) -> str:
    """The tracking URI: ``given``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file under ``$TESSERA_HOME``."""
    from tessera.core.assets import tessera_home

    value = given or os.environ.get("MLFLOW_TRACKING_URI") or str(tessera_home() / "mlflow" / "mlflow.db")
    if "://" in value or value.startswith(("file:", "databricks")):
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def flatten(node, prefix: str = "") -> dict[str, str]:
    """``{dotted.key: str(value)}`` for every leaf of a nested dict (lists are kept whole, as their text)."""
    if isinstance(node, dict):
        found = {}
        for key, value in node.items():
            found.update(flatten(value, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): str(node)}


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class MLflowLogger(Logger):
    """Records each run in MLflow (see the module's docstring)."""

    name = "mlflow"
    Config = MLflowConfig

    def __init__(self, config: MLflowConfig):
        super().__init__(config)
        self._client, self._run_id = None, None
        #: Set when the tracking store refused the run, so that the run's end does not try again.
        self._refused = False

    def validate(self, composition) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "logger=mlflow needs MLflow, which is not installed: pip install 'tessera[mlflow]' (mlflow-skinny)"
            )
        uri = tracking_uri(self.config.tracking_uri)
        if uri.startswith("file:"):
            raise ConfigError(
                f"logger.mlflow.tracking_uri={uri}: MLflow's file store is not supported; use a database such as "
                "sqlite:///mlflow.db or a tracking server (http://host:5000)"
            )
        database = _sqlite_file(uri)
        if database is not None:
            existing = next(parent for parent in [database, *database.parents] if parent.exists())
            writable = existing.is_file() if existing == database else existing.is_dir()
            if not writable or not os.access(existing, os.W_OK):
                raise ConfigError(
                    f"logger.mlflow.tracking_uri={uri}: {existing} is not a writable "
                    f"{'file' if existing == database else 'directory'}: point it at a SQLite file in a writable directory"
                )

    def _start(self, run) -> str | None:
        """The MLflow run of ``run``, created (with the params) on the first event that needs it; None on a rank
        other than 0 of a distributed run (rank 0 alone records it)."""
        if self._run_id is not None or not run.is_main:
            return self._run_id
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
        from omegaconf import OmegaConf

        uri = tracking_uri(self.config.tracking_uri)
        try:
            database = _sqlite_file(uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(self.config.experiment)
            if experiment is None:
                location = self.config.artifact_location
                if location is None and database is not None:
                    location = (database.parent / "artifacts").as_uri()
                experiment_id = client.create_experiment(self.config.experiment, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            created = client.create_run(
                experiment_id,
                run_name=self.config.run_name or run.dir.name,
                tags={
                    "tessera.run_dir": str(run.dir.resolve()),
                    "tessera.composition": json.dumps(run.composition.describe()),
                },
            )
            params = flatten(OmegaConf.to_container(run.cfg, resolve=True))
            client.log_batch(
                created.info.run_id,
                params=[Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in sorted(params.items())],
            )
        except (MlflowException, OSError) as error:
            self._refused = True
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"logger=mlflow cannot record the run at {uri}: {first}") from None
        self._client, self._run_id = client, created.info.run_id
        return self._run_id

    def _log(self, run, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id = self._start(run)
        if metrics and run_id is not None:
            self._client.log_batch(run_id, metrics=[Metric(k, v, 0, step) for k, v in metrics.items()])

    @hookimpl
    def tessera_run_start(self, run):
        self._start(run)

    @hookimpl
    def tessera_step_end(self, run, step, metrics):
        self._log(run, _scalars(metrics, "train"), step)

    @hookimpl
    def tessera_epoch_end(self, run, epoch, metrics):
        self._log(run, _scalars(metrics, "validation"), epoch)

    @hookimpl
    def tessera_federated_round_end(self, run, round, metrics):
        record = {key: metrics[key] for key in ("answered", "lost", "bytes_sent", "bytes_received", "seconds")}
        flat = {
            **_scalars(metrics["validation"], "round/validation"),
            **_scalars(metrics["train"], "round/train"),
            **_scalars(record, "round"),
        }
        self._log(run, flat, round)

    @hookimpl
    def tessera_evaluation(self, run, split, metrics):
        if split == "validation":
            return  # validation is logged per epoch by tessera_epoch_end
        self._log(run, _scalars(metrics, split), run.total_steps)

    @hookimpl
    def tessera_export(self, run, export_dir):
        run_id = self._start(run)
        if run_id is not None:
            self._client.set_tag(run_id, "tessera.export_dir", str(Path(export_dir).resolve()))

    @hookimpl
    def tessera_run_end(self, run, status, metrics):
        if self._refused or not run.is_main:
            return  # the run already failed with the store's one line; or rank 0 records it
        run_id = self._start(run)
        for name, directory in _ARTIFACTS.items():
            if (run.dir / name).is_file():
                self._client.log_artifact(run_id, str(run.dir / name), artifact_path=directory)
        for plot in sorted(run.dir.glob("*.png")):
            self._client.log_artifact(run_id, str(plot), artifact_path="plots")
        self._client.set_terminated(run_id, status=_STATUS.get(status, "FAILED"))


@hookimpl
def tessera_loggers():
    return [MLflowLogger]
