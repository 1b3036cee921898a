"""One trial of a study: a ``tessera train`` job composed with the trial's parameter values, run in
``<tune.dir>/trials/<number>/``, scored on its last validation metric and pruned after an unpromising epoch.

The pruning reporter is a plugin: it receives ``tessera_epoch_end`` (last, after the loggers), reports the epoch's
``tune.metric`` to the Optuna trial and raises ``optuna.TrialPruned`` when the pruner says so. The job then ends as a
failed run, and the trial's ``run.json`` is rewritten as ``pruned`` (with the epoch and the value).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from tessera import hookimpl
from tessera.core.errors import ConfigError
from tessera.core.files import write_text
from tessera.core.plugins import Plugins
from tessera.tune.space import Parameter, overrides

log = logging.getLogger("tessera")
REPORTER_PLUGIN = "tessera.tune"
_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class PruningReporter:
    """Reports each epoch's validation ``metric`` to the current Optuna trial; prunes when its pruner says so."""

    def __init__(self, metric: str):
        self.metric = metric
        self.trial = None
        #: Epochs reported in the current trial (a multi-stage job's epochs are counted across its stages).
        self.step = 0
        self.last: float | None = None

    def start(self, trial) -> None:
        """Report to ``trial`` from now on."""
        self.trial, self.step, self.last = trial, 0, None

    def stop(self) -> None:
        """Report to no trial (a run outside the study, as the best trial's retraining)."""
        self.trial = None

    @hookimpl(trylast=True)
    def tessera_epoch_end(self, run, epoch, metrics):
        import optuna

        if self.trial is None:
            return
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = (
                ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float))) or "none (no validation split)"
            )
            raise ConfigError(
                f"tune.metric={self.metric} is not a validation metric of this run: its validation metrics are {shown}"
            )
        self.step += 1
        self.last = float(value)
        self.trial.report(self.last, self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation {self.metric} {self.last:.4f}")


@dataclass
class TrialRunner:
    """Runs the trials of a study: the composition's own overrides, the space, where trials go and the plugins
    (with the reporter registered)."""

    base_overrides: list[str]
    parameters: dict[str, Parameter]
    study_dir: Path
    plugins: Plugins
    reporter: PruningReporter
    worker: dict = field(default_factory=dict)

    def __call__(self, trial) -> float:
        """Optuna's objective: run the trial's job and return its last validation ``tune.metric``."""
        import optuna

        values = {key: parameter.suggest(trial) for key, parameter in self.parameters.items()}
        run_dir = self.study_dir / "trials" / str(trial.number)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("overrides", overrides(values))
        trial.set_user_attr("run_dir", str(run_dir))
        log.info("trial %d: %s in %s", trial.number, " ".join(overrides(values)), run_dir)
        started = time.perf_counter()
        self.reporter.start(trial)
        try:
            test = run_job(self.base_overrides + overrides(values), run_dir, self.plugins)
        except optuna.TrialPruned as pruned:
            mark_pruned(run_dir, str(pruned), self.reporter.step, self.reporter.last)
            trial.set_user_attr("seconds", time.perf_counter() - started)
            raise
        finally:
            self.reporter.stop()
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("test", scalars(test))
        if self.reporter.last is None:
            raise ConfigError(
                "the trial completed no epoch, so it has no validation metric to score: set trainer.epochs >= 1 "
                "(and no trainer.max_steps below one epoch)"
            )
        return self.reporter.last


def scalars(metrics: dict) -> dict:
    """The numeric entries of a job's test metrics (``{stage: metrics}`` flattened as ``stage.key``)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in scalars(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def run_job(job_overrides: list[str], run_dir: Path, plugins: Plugins) -> dict:
    """Run the ``tessera train`` job of ``job_overrides`` in ``run_dir`` (its config saved as Hydra saves it, its
    log in ``train.log``); return its test metrics."""
    from tessera.core import job
    from tessera.core.cli import compose_config

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(job_overrides, plugins)
    write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(run_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(job_overrides))))
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    log.addHandler(handler)
    try:
        stages = job.plan(cfg, job_overrides, lambda o: compose_config(o, plugins), run_dir)
        return job.Job(stages, run_dir, plugins).run()
    finally:
        log.removeHandler(handler)
        handler.close()


def mark_pruned(run_dir: Path, reason: str, epochs: int, value: float | None) -> None:
    """Rewrite the trial's ``run.json`` (and a stage's that stopped) as ``pruned``."""
    from tessera.core.pipeline import status, write_status

    for directory in [run_dir, *sorted((run_dir / "stages").glob("*"))]:
        recorded = status(directory)
        if directory == run_dir or recorded.get("status") == "failed":
            recorded = {k: v for k, v in recorded.items() if k not in ("status", "error", "reason", "epochs", "value")}
            write_status(directory, "pruned", reason=reason, epochs=epochs, value=value, **recorded)
