"""The end of a study: the best trial as a ``tessera train`` command line, ``tune.json``, ``tune_report.md`` and the
plots Optuna draws with matplotlib (optimisation history, parameter importances, parallel coordinates)."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

from tessera.core.files import write_json, write_text

#: The plots of a report: file name -> (title, Optuna's matplotlib function).
PLOTS = {
    "optimization_history.png": ("Optimisation history", "plot_optimization_history"),
    "param_importances.png": ("Parameter importances", "plot_param_importances"),
    "parallel_coordinate.png": ("Parallel coordinates", "plot_parallel_coordinate"),
}


def best_trial(study):
    """The best complete trial, or None when no trial completed."""
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def train_command(base_overrides: list[str], trial) -> str:
    """The ``tessera train`` command line that reproduces ``trial``'s run."""
    return shlex.join(["tessera", "train", *base_overrides, *trial.user_attrs.get("overrides", [])])


def draw_plots(study, directory: Path) -> dict[str, str | None]:
    """Write the PNGs of :data:`PLOTS` into ``directory``; ``{file: None}`` for each drawn, ``{file: why not}`` for a
    plot Optuna cannot draw yet (too few complete trials, a single parameter value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    outcome = {}
    for name, (_, function) in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 7), max(figure.get_size_inches()[1], 4.5))
            figure.tight_layout()
            write_png(figure, directory / name)
            plt.close(figure)
            outcome[name] = None
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as error:
            plt.close("all")
            (directory / name).unlink(missing_ok=True)
            outcome[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    return outcome


def write_png(figure, path: Path) -> None:
    """Save ``figure`` as a PNG at ``path`` atomically (a temporary file renamed into place)."""
    import os
    import tempfile

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def summary(study, storage_url: str, base_overrides: list[str], seconds: float) -> dict:
    """The study as plain data (``tune.json``): its settings, counts by state, the best trial and every trial."""
    from collections import Counter

    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    rows = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "epochs": len(t.intermediate_values),
            "seconds": t.user_attrs.get("seconds"),
            "test": t.user_attrs.get("test"),
            "run_dir": t.user_attrs.get("run_dir"),
        }
        for t in trials
    ]
    return {
        "study": study.study_name,
        "storage": storage_url,
        "direction": study.direction.name.lower(),
        "metric": study.user_attrs.get("tessera_metric"),
        "counts": dict(Counter(row["state"] for row in rows)),
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "overrides": best.user_attrs.get("overrides", []),
            "command": train_command(base_overrides, best),
            "test": best.user_attrs.get("test"),
            "run_dir": best.user_attrs.get("run_dir"),
        },
        "seconds": seconds,
        "trials": rows,
    }


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(record: dict, plots: dict[str, str | None]) -> str:
    """``tune_report.md``: the study, the best trial with its command line, a table of the trials and the plots."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(record["counts"].items())) or "no trials"
    lines = [
        f"# tessera tune report: {record['study']}",
        "",
        f"- storage: `{record['storage']}`",
        f"- objective: {record['metric']} on the validation split (last epoch)",
        f"- trials: {counts}",
        f"- this process's time: {record['seconds']:.1f} s",
        "",
        "## Best trial",
        "",
    ]
    best = record["best"]
    if best is None:
        lines.append("No trial completed yet.")
    else:
        lines += [f"Trial {best['number']}: validation {_cell(best['value'])}, run `{best['run_dir']}`.", ""]
        lines += [f"- `{key}` = {_cell(value)}" for key, value in best["params"].items()]
        test = ", ".join(f"{k} {_cell(v)}" for k, v in (best["test"] or {}).items() if k != "examples")
        lines += ["", f"Test metrics: {test or '-'}", "", "```", best["command"], "```"]
    keys = list(dict.fromkeys(k for row in record["trials"] for k in row["params"]))
    lines += ["", "## Trials", "", "| trial | state | value | " + " | ".join(keys) + " | epochs | seconds |"]
    lines.append("|---" * (len(keys) + 5) + "|")
    for row in record["trials"]:
        cells = [row["number"], row["state"], row["value"], *(row["params"].get(k) for k in keys)]
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, row["epochs"], row["seconds"]]) + " |")
    lines += ["", "## Plots", ""]
    for name, (title, _) in PLOTS.items():
        lines.append(f"![{title}]({name})" if plots.get(name) is None else f"- {title}: not drawn ({plots[name]})")
    return "\n".join(lines) + "\n"


def write_report(study, storage_url: str, base_overrides: list[str], directory: Path, seconds: float) -> dict:
    """Write the plots, ``tune.json`` and ``tune_report.md`` into ``directory``; return the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    record = summary(study, storage_url, base_overrides, seconds)
    plots = draw_plots(study, directory)
    record["plots"] = {name: reason or "drawn" for name, reason in plots.items()}
    write_json(directory / "tune.json", record)
    write_text(directory / "tune_report.md", markdown(record, plots))
    return record
