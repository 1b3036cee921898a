"""Training on several processes: DDP or FSDP through accelerate, one process per CPU share or GPU.

``tessera train trainer.processes=N`` (N > 1) starts itself again under torchrun (``torch.distributed.run``,
standalone rendezvous on this machine) with the job's overrides and its run directory, and waits: :func:`launch`.
A command started by the user under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` in the environment) runs
as it is, each process being one rank: :func:`launched`.

Every rank builds the data and the model and trains; rank 0 alone validates (the others receive its metrics),
writes checkpoints, ``metrics.json``, plots, ``run.json``, TensorBoard events and the export. The batches of an
epoch are sharded: :func:`tessera.core.batching.batch_order` cuts the epoch into batches of ``batch_size x
processes`` examples and gives each rank its share, so each example is seen once per epoch across the ranks.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from tessera.core.errors import ConfigError, IncompatibleError, TesseraError

log = logging.getLogger("tessera")
STRATEGIES = ("ddp", "fsdp")
#: How long a rank waits for the others at a collective: rank 0 alone evaluates, compresses and exports while the
#: others wait at the stage's end (a dead rank is noticed at once: torchrun stops the others).
COLLECTIVE_TIMEOUT = timedelta(hours=6)


def launched() -> bool:
    """Whether this process is one rank of a distributed launch (torchrun, ``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's global rank (0 outside a distributed launch)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files: rank 0, or the only process."""
    return rank() == 0


def process_count(trainer_cfg) -> int:
    """The processes that train together: the launcher's world size under torchrun, else ``trainer.processes``."""
    return int(os.environ["WORLD_SIZE"]) if launched() else trainer_cfg.processes


def effective_batch_size(trainer_cfg) -> int:
    """The examples of one optimizer step: ``batch_size x processes x gradient_accumulation_steps``."""
    return trainer_cfg.batch_size * process_count(trainer_cfg) * trainer_cfg.gradient_accumulation_steps


def describe_batch(trainer_cfg) -> dict:
    """``{"processes", "strategy", "effective_batch_size"}`` of a run, for the log, ``metrics.json`` and
    ``run.json``."""
    processes = process_count(trainer_cfg)
    return {
        "processes": processes,
        "strategy": trainer_cfg.strategy if processes > 1 else "none",
        "effective_batch_size": effective_batch_size(trainer_cfg),
    }


def threads_per_process(processes: int) -> int:
    """Torch threads for each of ``processes`` CPU ranks on this machine: the cores this process may use, shared."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def check_processes(trainer_cfg, device: str) -> None:
    """Refuse a process count or strategy that cannot run here (one line each, before any work)."""
    processes, strategy = trainer_cfg.processes, trainer_cfg.strategy
    if processes < 1:
        raise ConfigError(f"trainer.processes={processes} must be at least 1")
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy} is not one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and device == "cpu":
        raise ConfigError(
            "trainer.strategy=fsdp needs CUDA GPUs (tessera runs accelerate's FSDP on CUDA only): "
            "use trainer.strategy=ddp on the CPU"
        )

    if launched():
        world = int(os.environ["WORLD_SIZE"])
        if processes not in (1, world):
            raise ConfigError(
                f"trainer.processes={processes} but the launcher started {world} processes: "
                f"drop trainer.processes or set it to {world}"
            )
        return
    if device == "cpu":
        cores = os.cpu_count() or 1
        if processes > cores:
            raise ConfigError(
                f"trainer.processes={processes} is more than this machine's {cores} CPU cores: use at most {cores}"
            )
    else:
        import torch

        gpus = torch.cuda.device_count()
        if processes > gpus:
            raise ConfigError(
                f"trainer.processes={processes} is more than the {gpus} visible CUDA GPUs: use at most {gpus} "
                "(one process a GPU)"
            )


def check_composition(composition, trainer_cfg) -> None:
    """Refuse the techniques that cannot train on several processes (``not_distributed``: why not), and a resume
    under FSDP (which writes no checkpoint)."""
    processes = process_count(trainer_cfg)
    if processes < 2:
        return
    if trainer_cfg.strategy == "fsdp" and composition.cfg.resume:
        raise ConfigError(
            "resume=true with trainer.strategy=fsdp: a run under FSDP writes no checkpoint to resume from; "
            "train it again, or use trainer.strategy=ddp for resumable runs"
        )
    for techniques in composition.techniques.values():
        for technique in techniques:
            reason = getattr(technique, "not_distributed", None)
            if reason:
                raise IncompatibleError(technique.label, f"trainer.processes={processes}", reason)


# --- inside the ranks ---------------------------------------------------------------------------------------------


def start(device: str) -> None:
    """Join the other ranks (accelerate's process state: gloo on the CPU, NCCL on CUDA), once per process."""
    from accelerate import PartialState

    PartialState(cpu=device == "cpu", timeout=COLLECTIVE_TIMEOUT)


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing outside a distributed launch)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def from_main(value):
    """Rank 0's ``value`` on every rank (``value`` itself outside a distributed launch)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def agreed_run_dir(overrides: list[str]) -> list[str]:
    """``overrides`` with one ``hydra.run.dir`` for every rank of a user's torchrun launch that gave none: rank 0
    picks Hydra's default, ``outputs/<date>/<time>``, and tells the others through torchrun's own key-value store."""
    if not launched() or any(o.startswith("hydra.run.dir=") for o in overrides):
        return list(overrides)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise ConfigError(
            "this launcher gives the ranks no shared store to agree on a run directory: add hydra.run.dir=DIR"
        )
    import time

    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    key = f"tessera/run_dir/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if is_main():
        store.set(key, str(Path("outputs", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S")).absolute()))
    return [*overrides, f"hydra.run.dir={store.get(key).decode()}"]


def rank_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides of a rank other than 0: it writes no ``.hydra/`` files and no ``train.log`` (rank 0 does);
    its warnings still reach the console."""
    if is_main():
        return list(overrides)
    return [*overrides, "hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING"]


# --- the launcher -------------------------------------------------------------------------------------------------


def needs_launch(cfg) -> bool:
    """Whether ``tessera train`` must start itself under torchrun for ``cfg`` (``trainer.processes`` > 1, not yet
    launched)."""
    return cfg.trainer.processes > 1 and not launched()


@contextmanager
def _environment(values: dict[str, str]):
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _resume_hint(run_dir: Path) -> str:
    from tessera.core.checkpoints import complete

    found = sorted(
        (path for directory in run_dir.glob("**/checkpoints") for path in complete(directory)),
        key=lambda path: path.stat().st_mtime,
    )
    where = f"its last checkpoint, {found[-1].relative_to(run_dir)}" if found else "the start (no checkpoint yet)"
    return f"rerun the same command with resume=true hydra.run.dir={run_dir}: it continues from {where}"


def _describe_failure(rank_number: int, failure) -> str:
    if failure.exitcode is not None and failure.exitcode < 0:
        try:
            return f"rank {rank_number} was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            return f"rank {rank_number} was killed by signal {-failure.exitcode}"
    return f"rank {rank_number} exited with status {failure.exitcode}"


def launch(cfg, overrides: list[str], run_dir: Path) -> dict:
    """Run the job ``overrides`` (its Hydra task overrides) on ``trainer.processes`` ranks under torchrun, in
    ``run_dir``; return its test metrics from ``run.json``. When a rank dies, torchrun stops the others; the job's
    ``run.json`` then says ``failed`` with the rank and how it ended, and a ``TesseraError`` says the same with the
    command that resumes from the last checkpoint."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from tessera.core.pipeline import status, write_status
    from tessera.core.trainer import resolve_device

    processes = cfg.trainer.processes
    device, _ = resolve_device(cfg.trainer)
    arguments = parse_args(
        [
            "--standalone",
            f"--nproc-per-node={processes}",
            "--max-restarts=0",
            "--module",
            "tessera",
            "train",
            *overrides,
            f"hydra.run.dir={run_dir}",
        ]
    )
    threads = cfg.trainer.num_threads or (threads_per_process(processes) if device == "cpu" else 1)
    log.info(
        "launching %d processes under torchrun (%s, %s, %d torch threads each): effective batch size %d",
        processes,
        cfg.trainer.strategy,
        "gloo" if device == "cpu" else "nccl",
        threads,
        effective_batch_size(cfg.trainer),
    )
    try:
        with _environment({"OMP_NUM_THREADS": str(threads)}):
            run(arguments)
    except ChildFailedError as error:
        rank_number, failure = error.get_first_failure()
        recorded = status(run_dir)
        if rank_number == 0 and recorded.get("status") == "failed":
            message = f"{_describe_failure(0, failure)}: {recorded.get('error', 'see its error above')}"
        else:
            message = (
                f"trainer.processes={processes}: {_describe_failure(rank_number, failure)}; torchrun stopped the other "
                "ranks"
            )
            resume = _resume_hint(run_dir)
            details = {key: value for key, value in recorded.items() if key != "status"}
            write_status(run_dir, "failed", **{**details, "error": message, "resume": resume})
            message = f"{message}; {resume}"
        raise TesseraError(message) from None
    except SignalException as error:  # the launcher was stopped: torchrun stopped the ranks, each recorded it
        raise TesseraError(f"stopped by {signal.Signals(error.sigval).name}; {_resume_hint(run_dir)}") from None
    recorded = status(run_dir)
    return recorded.get("test", {})
