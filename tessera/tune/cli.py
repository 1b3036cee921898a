"""``tessera tune [overrides]``: run (or continue) the Optuna study that ``tune.*`` describes.

Everything is checked before the first trial: the overrides compose and validate as ``tessera train``'s, the space
is well formed and names keys of the composed config, every choice and both ends of every range compose and
validate, the storage opens and an existing study has the same space. Then this process (and ``tune.workers - 1``
more that it starts) runs trials until the study has ``tune.trials`` complete or pruned trials, or ``tune.timeout``
passes; at the end it writes the report and prints the best trial's ``tessera train`` command line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tessera.core.errors import ConfigError, TesseraError
from tessera.core.job import sigterm_interrupts

log = logging.getLogger("tessera")
#: Set in the environment of the workers ``tune.workers`` starts: the worker's number (they write no report).
WORKER_ENV = "TESSERA_TUNE_WORKER"
USAGE = """usage: tessera tune [KEY=VALUE...]

Run (or continue) an Optuna study over tessera train runs. The search space and the study are config keys:
  tune.space={trainer.learning_rate:{type:loguniform,low:1e-5,high:1e-3},adapter.lora.r:[4,8,16]}
  tune.trials=20 tune.study=NAME tune.storage=sqlite:///study.db tune.pruner=median|hyperband|none
  tune.workers=2 tune.timeout=SECONDS tune.metric=accuracy tune.direction=maximize tune.retrain=true
Every other override is a tessera train override (experiment=..., model=..., trainer.epochs=...).
See docs/tuning.md."""


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(all overrides, the trials' own overrides)``: the latter without ``tune.*``."""
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        raise ConfigError(f"tessera tune takes KEY=VALUE overrides, not {flags[0]} (a sweep is the study itself)")
    hydra = [
        a for a in argv if a.lstrip("+~").startswith(("hydra.", "hydra/")) and not a.startswith("hydra.searchpath=")
    ]
    if hydra:
        raise ConfigError(
            f"tessera tune chooses the trials' run directories: {hydra[0]} is not accepted (set tune.dir instead)"
        )
    # tune.space is an open mapping: Hydra adds its keys only with ++ / +, which the command supplies.
    everything = [f"++{a.lstrip('+')}" if a.lstrip("+").startswith(("tune.space=", "tune.space.")) else a for a in argv]
    return everything, [a for a in argv if not a.lstrip("+~").startswith(("tune.", "tune="))]


def _without_keys(overrides: list[str], keys) -> list[str]:
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in keys]


def _validate_config(cfg, overrides: list[str], plugins) -> None:
    """Validate the composed ``cfg`` as ``tessera train`` validates its composition (no heavy work)."""
    from tessera.core import job
    from tessera.core.cli import compose_config

    job.validate(job.plan(cfg, overrides, lambda o: compose_config(o, plugins), run_dir=None), plugins)


def check_values(cfg, parameters, overrides: list[str], plugins) -> None:
    """Set every choice and both ends of every range into a copy of ``cfg`` (type-checked by the schema) and
    validate that composition; a ``ConfigError`` naming the value that does not work."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for key, parameter in parameters.items():
        for value in parameter.samples():
            changed = cfg.copy()
            try:
                OmegaConf.update(changed, key, value, merge=False)
                _validate_config(changed, overrides, plugins)
            except (HydraException, OmegaConfBaseException) as error:
                reason = str(error).strip().splitlines()[0]
                raise ConfigError(f"tune.space.{key}={value!r} does not work: {reason}") from None
            except TesseraError as error:
                raise ConfigError(f"tune.space.{key}={value!r} does not work: {error}") from None


def check(argv: list[str], plugins):
    """Validate the command (see the module's docstring) and return ``(config, space, the trials' base
    overrides)``, before any work."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from tessera.core.cli import compose_config, validate
    from tessera.tune.space import check_keys, parse_space
    from tessera.tune.study import check_settings

    everything, trial_overrides = _split(argv)
    try:
        cfg = compose_config(everything, plugins)
    except (HydraException, OmegaConfBaseException):
        validate(everything, plugins)  # raises the one-line explanation of tessera train
        raise
    check_settings(cfg.tune)
    parameters = parse_space(cfg.tune.space)
    check_keys(parameters, cfg)
    for entry in cfg.tune.enqueue:
        unknown = sorted(set(entry) - set(parameters)) if hasattr(entry, "keys") else ["(not a mapping)"]
        if unknown:
            raise ConfigError(f"tune.enqueue entry {entry} names {unknown[0]}, which is not in tune.space")
    base = _without_keys(trial_overrides, parameters)
    _validate_config(cfg, everything, plugins)
    check_values(cfg, parameters, everything, plugins)
    if cfg.tune.retrain:
        validate([*base, *cfg.tune.retrain_overrides], plugins)
    return cfg, parameters, base


def _log_to_stderr() -> None:
    logger = logging.getLogger("tessera")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _threads_per_worker(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


def start_workers(argv: list[str], workers: int) -> list[subprocess.Popen]:
    """Start ``workers - 1`` more ``tessera tune`` processes on the same study, each with its share of the cores."""
    threads = str(_threads_per_worker(workers))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tessera", "tune", *argv],
            env={**os.environ, WORKER_ENV: str(number), "OMP_NUM_THREADS": threads},
        )
        for number in range(1, workers)
    ]


def optimize(study, storage, cfg, runner) -> None:
    """Run trials in this process until the study counts ``tune.trials`` (finished here or elsewhere, with the ones
    other workers are running) or ``tune.timeout`` passes."""
    from tessera.tune.study import counted, fail_orphaned_trials

    def fail_orphans() -> None:
        failed = fail_orphaned_trials(study, storage)
        if failed:
            log.info("marked failed the trials left running by a killed tessera tune: %s", ", ".join(map(str, failed)))

    fail_orphans()
    remaining = cfg.tune.trials - counted(study)
    if remaining <= 0:
        log.info("study %s already has %d trials (tune.trials=%d)", study.study_name, counted(study), cfg.tune.trials)
        return

    def stop_when_counted(study, trial) -> None:
        fail_orphans()  # a worker of this host that died meanwhile
        if counted(study) >= cfg.tune.trials:
            study.stop()

    study.optimize(
        runner, n_trials=remaining, timeout=cfg.tune.timeout, callbacks=[stop_when_counted], gc_after_trial=True
    )


def main(argv: list[str]) -> int:
    """``tessera tune [overrides]``: check, run the study's trials, report the best one."""
    if {"-h", "--help"}.intersection(argv):
        print(USAGE)
        return 0
    from tessera.core.cli import _warn, prepare_hydra
    from tessera.core.plugins import discover
    from tessera.tune.report import best_trial, train_command, write_report
    from tessera.tune.study import open_storage, open_study, storage_url, worker_identity
    from tessera.tune.trial import REPORTER_PLUGIN, PruningReporter, TrialRunner, run_job

    worker = int(os.environ.get(WORKER_ENV, "0"))
    discovered = discover()
    if not worker:
        _warn(discovered)
    discovered.check_strict()
    prepare_hydra(discovered)
    cfg, parameters, base = check(argv, discovered)
    study_dir = Path(cfg.tune.dir).expanduser().absolute()
    url = storage_url(cfg.tune, study_dir)
    storage = open_storage(url, cfg.tune.heartbeat)
    study = open_study(storage, cfg.tune, parameters, worker)
    if not worker:
        for entry in cfg.tune.enqueue:
            study.enqueue_trial(dict(entry), skip_if_exists=True)
    reporter = PruningReporter(cfg.tune.metric)
    plugins = discovered.including(REPORTER_PLUGIN, reporter)
    runner = TrialRunner(base, parameters, study_dir, plugins, reporter, worker_identity())
    _log_to_stderr()
    started = time.perf_counter()
    children = []
    with sigterm_interrupts():
        try:
            if cfg.tune.workers > 1 and not worker:
                children = start_workers(argv, cfg.tune.workers)
            if cfg.tune.workers > 1:
                import torch

                torch.set_num_threads(_threads_per_worker(cfg.tune.workers))
            log.info("study %s in %s: %d of %d trials", study.study_name, url, len(study.trials), cfg.tune.trials)
            optimize(study, storage, cfg, runner)
            failed = [child.args for child in children if child.wait() != 0]
        except BaseException as error:
            for child in children:  # the workers this process started stop with it
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                child.wait()
            if not isinstance(error, KeyboardInterrupt):
                raise
            print(
                f"tessera tune: interrupted; rerun the same command to continue the study (its trials are in {url})",
                file=sys.stderr,
            )
            return 130
    if worker:
        return 0
    if failed:
        raise TesseraError(f"{len(failed)} tune worker(s) failed (their errors are above): the study is in {url}")
    record = write_report(study, url, base, study_dir, time.perf_counter() - started)
    best = best_trial(study)
    if best is None:
        print(f"no trial completed yet; report: {study_dir / 'tune_report.md'}")
        return 1
    counts = ", ".join(f"{count} {state}" for state, count in sorted(record["counts"].items()))
    print(f"best trial {best.number}: validation {cfg.tune.metric} {best.value:.4f} ({counts})")
    print(train_command(base, best))
    print(f"report: {study_dir / 'tune_report.md'}")
    if cfg.tune.retrain:
        target = study_dir / "best"
        log.info("retraining the best trial's composition in %s", target)
        run_job([*base, *best.user_attrs.get("overrides", []), *cfg.tune.retrain_overrides], target, plugins)
        print(f"retrained: {target} (export: {target / 'export'})")
    return 0
