"""Built-in TensorBoard logger, under ``<run>/tensorboard``: training scalars per step (``train/*``), validation
metrics per epoch (``validation/*``, from ``tessera_epoch_end``), a federation's rounds (``round/*``: validation,
aggregated training metrics, clients answered and bytes moved, per round) and the test metrics at the last step
(``test/*``). On several processes, rank 0 alone writes."""

from tessera import hookimpl

_WRITER_KEY = "tensorboard.writer"


class _Skipped:
    """The writer of a rank other than 0: adds nothing."""

    def add_scalar(self, *args) -> None:
        pass


_SKIPPED = _Skipped()


def _scalars(metrics: dict) -> dict:
    return {
        key: value for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _writer(run):
    """The run's writer (on a rank other than 0, one that writes nothing)."""
    if not run.is_main:
        return _SKIPPED
    if _WRITER_KEY not in run.state:
        from torch.utils.tensorboard import SummaryWriter

        run.state[_WRITER_KEY] = SummaryWriter(log_dir=str(run.dir / "tensorboard"))
    return run.state[_WRITER_KEY]


@hookimpl
def tessera_step_end(run, step, metrics):
    writer = _writer(run)
    for key, value in _scalars(metrics).items():
        writer.add_scalar(f"train/{key}", value, step)


@hookimpl
def tessera_epoch_end(run, epoch, metrics):
    writer = _writer(run)
    for key, value in _scalars(metrics).items():
        writer.add_scalar(f"validation/{key}", value, epoch)


@hookimpl
def tessera_federated_round_end(run, round, metrics):
    writer = _writer(run)
    flat = {
        **{f"validation/{k}": v for k, v in metrics["validation"].items()},
        **{f"train/{k}": v for k, v in metrics["train"].items()},
        **{k: metrics[k] for k in ("answered", "lost", "bytes_sent", "bytes_received", "seconds")},
    }
    for key, value in _scalars(flat).items():
        writer.add_scalar(f"round/{key}", value, round)


@hookimpl
def tessera_evaluation(run, split, metrics):
    if split == "validation":
        return  # validation is written per epoch by tessera_epoch_end
    writer = _writer(run)
    for key, value in _scalars(metrics).items():
        writer.add_scalar(f"{split}/{key}", value, run.total_steps)


@hookimpl
def tessera_run_end(run, status, metrics):
    writer = run.state.pop(_WRITER_KEY, None)
    if writer is not None:
        writer.close()
