"""The Optuna study behind ``tessera tune``: its storage, sampler and pruner from ``tune.*``, opened or created with
its search space recorded, and the trials a killed worker left running marked failed.

Workers cooperate through the storage alone (Optuna's RDB storage: SQLite on one machine, PostgreSQL or MySQL
across machines). A trial records the worker that runs it (host, process id and start time); a worker that starts on
the same host marks the trials of a dead process failed at once, and every worker sends heartbeats
(``tune.heartbeat``) so that the trials of a worker lost on another machine are failed after two silent intervals.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

from tessera.core.errors import ConfigError
from tessera.tune.space import Parameter

SPACE_ATTR = "tessera_space"
METRIC_ATTR = "tessera_metric"
WORKER_ATTR = "worker"
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


def storage_url(tune_cfg, study_dir: Path) -> str:
    """``tune.storage``, or ``sqlite:///<study dir>/study.db`` when it is null."""
    return tune_cfg.storage or f"sqlite:///{study_dir / 'study.db'}"


def check_settings(tune_cfg) -> None:
    """Refuse ``tune.*`` values that cannot work (one line each), before the storage is opened."""
    checks = (("direction", DIRECTIONS), ("sampler", SAMPLERS), ("pruner", PRUNERS))
    for key, allowed in checks:
        if tune_cfg[key] not in allowed:
            raise ConfigError(f"tune.{key}={tune_cfg[key]} is not one of {', '.join(allowed)}")
    for key, least in (("trials", 1), ("workers", 1), ("heartbeat", 1), ("pruner_startup_trials", 0)):
        if tune_cfg[key] < least:
            raise ConfigError(f"tune.{key}={tune_cfg[key]} must be at least {least}")
    if tune_cfg.pruner_warmup_epochs < 0:
        raise ConfigError(f"tune.pruner_warmup_epochs={tune_cfg.pruner_warmup_epochs} must not be negative")
    if tune_cfg.timeout is not None and tune_cfg.timeout <= 0:
        raise ConfigError(f"tune.timeout={tune_cfg.timeout} must be a positive number of seconds (or null)")
    if not tune_cfg.study or "/" in tune_cfg.study:
        raise ConfigError(f"tune.study={tune_cfg.study!r} must be a non-empty name without '/'")


def open_storage(url: str, heartbeat: int):
    """Optuna's RDB storage at ``url`` (created when new), with heartbeats; a ``ConfigError`` when it cannot be
    opened."""
    import optuna

    try:
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"tune.storage={url} cannot be opened ({type(error).__name__}: {first}): give an Optuna RDB URL such "
            "as sqlite:///path/study.db or postgresql://user:password@host/db"
        ) from None


def make_sampler(tune_cfg, parameters: dict[str, Parameter], worker: int):
    """The sampler ``tune.sampler`` names, seeded with ``tune.seed + worker`` (workers draw different trials)."""
    import optuna

    seed = None if tune_cfg.seed is None else tune_cfg.seed + worker
    if tune_cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tune_cfg.sampler == "grid":
        return optuna.samplers.GridSampler({key: p.grid() for key, p in parameters.items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(tune_cfg):
    """The pruner ``tune.pruner`` names (epochs are its steps)."""
    import optuna

    if tune_cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune_cfg.pruner_startup_trials, n_warmup_steps=tune_cfg.pruner_warmup_epochs
        )
    if tune_cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def _recorded(parameters: dict[str, Parameter]) -> str:
    return json.dumps({key: p.describe() for key, p in sorted(parameters.items())}, sort_keys=True)


def open_study(storage, tune_cfg, parameters: dict[str, Parameter], worker: int = 0):
    """Load the study ``tune.study`` from ``storage`` or create it, recording its space and metric; a
    ``ConfigError`` when it exists with another space, metric or direction."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=tune_cfg.study,
        direction=tune_cfg.direction,
        sampler=make_sampler(tune_cfg, parameters, worker),
        pruner=make_pruner(tune_cfg),
        load_if_exists=True,
    )
    space, metric = _recorded(parameters), f"{tune_cfg.metric} ({tune_cfg.direction})"
    stored_space, stored_metric = study.user_attrs.get(SPACE_ATTR), study.user_attrs.get(METRIC_ATTR)
    if stored_space is None:
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr(METRIC_ATTR, metric)
        return study
    if study.direction.name.lower() != tune_cfg.direction or stored_metric != metric:
        raise ConfigError(
            f"study '{tune_cfg.study}' was created to {stored_metric or study.direction.name.lower()}, not "
            f"{metric}: use another tune.study name or the study's own tune.metric / tune.direction"
        )
    if stored_space != space:
        before, now = json.loads(stored_space), json.loads(space)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise ConfigError(
            f"study '{tune_cfg.study}' was created with another search space (changed: {', '.join(changed)}): "
            "use another tune.study name, or the space it was created with"
        )
    return study


def worker_identity() -> dict:
    """This process as a trial's worker: ``{"host", "pid", "started"}`` (the process's start time in clock ticks
    since boot, so a reused process id is not mistaken for the worker)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(worker: dict) -> bool:
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return worker.get("started") is None or _start_time(worker["pid"]) == worker["started"]


def fail_orphaned_trials(study, storage) -> list[int]:
    """Mark failed the running trials whose worker was a process of this host that no longer exists (a killed
    ``tessera tune``); return their numbers. Trials of other hosts are left to the heartbeat."""
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if isinstance(worker, dict) and worker.get("host") == host and not _alive(worker):
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial.number)
    return failed


def finished(study) -> int:
    """The trials that count towards ``tune.trials``: complete or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def counted(study) -> int:
    """Finished trials plus the ones running now (in any worker): a worker stops when these reach
    ``tune.trials``, so that workers together do not overshoot it."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))
