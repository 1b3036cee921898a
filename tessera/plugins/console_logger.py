"""Built-in console logger: a rich progress bar with loss and throughput (of a federation: of its rounds), and
the metrics of each evaluation. On several processes, rank 0 alone shows them."""

from tessera import hookimpl

_PROGRESS_KEY = "console.progress"


@hookimpl
def tessera_run_start(run):
    if not run.is_main:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} samples/s"),
        TimeElapsedColumn(),
        transient=False,
    )
    progress.start()
    task = progress.add_task("train", total=run.total_steps, completed=run.start_step, loss=float("nan"), speed=0.0)
    run.state[_PROGRESS_KEY] = (progress, task)


@hookimpl
def tessera_step_end(run, step, metrics):
    if _PROGRESS_KEY not in run.state:
        return
    progress, task = run.state[_PROGRESS_KEY]
    progress.update(task, completed=step, loss=metrics["loss"], speed=metrics["samples_per_second"])


@hookimpl
def tessera_epoch_end(run, epoch, metrics):
    if _PROGRESS_KEY not in run.state:
        return
    progress, _ = run.state[_PROGRESS_KEY]
    shown = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float))
    progress.console.print(f"epoch {epoch}: validation {shown}")


@hookimpl
def tessera_federated_round_end(run, round, metrics):
    if _PROGRESS_KEY not in run.state:
        return
    progress, task = run.state[_PROGRESS_KEY]
    progress.update(task, completed=round, loss=metrics["train"].get("train_loss", float("nan")))
    shown = "  ".join(f"{key} {value:.4f}" for key, value in metrics["validation"].items() if isinstance(value, float))
    progress.console.print(f"round {round}: {metrics['answered']}/{metrics['clients']} clients, validation {shown}")


@hookimpl
def tessera_evaluation(run, split, metrics):
    if split == "validation":
        return  # validation metrics are shown at each epoch's end
    from rich.console import Console

    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    Console().print(f"[bold]{split}[/bold]: {shown}")


@hookimpl
def tessera_run_end(run, status, metrics):
    found = run.state.pop(_PROGRESS_KEY, None)
    if found:
        found[0].stop()
