"""Sweeps: ``tessera train -m`` through Hydra's sweeper and launchers, and the summary a sweep writes at its end.

Hydra's basic sweeper expands the combinations; the launcher runs them: Hydra's default one after another in the
process, joblib's (``hydra/launcher=joblib hydra.launcher.n_jobs=N``, the ``hydra-joblib-launcher`` package) N at a
time in worker processes. Before the launch :func:`threads_per_job` gives every job an equal share of the cores
(``trainer.num_threads``) unless the jobs set their own. A job that fails is recorded in its ``run.json`` and the
others go on; after the last one, :class:`SweepSummary` (a Hydra callback in tessera's config) writes
``summary.json`` and ``summary.md`` into the sweep directory and the command exits with status 1 if a job failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tessera.core.files import write_json, write_text
from tessera.core.pipeline import status
from tessera.core.plugins import Plugins

log = logging.getLogger("tessera")
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"


def jobs_at_a_time(launcher: DictConfig, jobs: int, cores: int) -> int:
    """How many of ``jobs`` the Hydra ``launcher`` (its config node) runs at once on ``cores``: its ``n_jobs``
    resolved as joblib does (-1 all cores, -2 all but one...), 1 for a launcher without one (Hydra's basic)."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    return max(1, min(n_jobs if n_jobs > 0 else cores + 1 + n_jobs, jobs))


def threads_per_job(launcher: DictConfig, configs: list[DictConfig]) -> int | None:
    """The ``trainer.num_threads`` each job of a parallel sweep gets by default: the cores divided by the jobs that
    run at once (at least 1). None when the launcher runs one job at a time or a job sets its own threads."""
    from joblib import cpu_count  # the cores joblib resolves n_jobs=-1 with (CPU affinity and cgroup quota)

    at_once = jobs_at_a_time(launcher, len(configs), cpu_count())
    if at_once == 1 or any(cfg.trainer.num_threads is not None for cfg in configs):
        return None
    return max(1, cpu_count() // at_once)


def _job_record(job_dir: Path) -> tuple[dict, dict]:
    """``(run.json, run.json of the stage whose metrics stand for the job)`` of a job directory: the job's own for a
    single run, its last stage's for a multi-stage job."""
    record = status(job_dir)
    if "stages" in record and record["stages"]:
        return record, status(job_dir / "stages" / list(record["stages"])[-1])
    return record, record


def _ranking(composition: dict, plugins: Plugins) -> tuple[str, bool] | None:
    """The ranking metric of a run's composition (``{family: [names]}``), None when it is not known."""
    from tessera.core.evaluate import ranking_metric

    names = composition.get("objective") or []
    if not names or any(name not in plugins.registry.names("objective") for name in names):
        return None
    return ranking_metric([plugins.registry.get("objective", name).cls for name in names])


def _row(job_dir: Path, sweep_dir: Path, plugins: Plugins) -> dict:
    hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
    record, stage = _job_record(job_dir)
    test = record.get("test") or {}
    if "stages" in record and test:
        test = test.get(list(record["stages"])[-1]) or {}
    ranking = _ranking(stage.get("composition") or {}, plugins)
    return {
        "job": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "status": record.get("status", "not started"),
        "error": record.get("error"),
        "test": {
            k: v for k, v in test.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
        },
        "metric": ranking[0] if ranking else None,
        "higher_is_better": ranking[1] if ranking else None,
        "dir": str(job_dir),
        "best": False,
    }


def summarize(sweep_dir: Path, plugins: Plugins) -> dict:
    """The summary of the sweep in ``sweep_dir``: one row per job directory (``.hydra/hydra.yaml``) in job order,
    with its overrides, status, one-line error, scalar test metrics and directory; the best complete job by the
    objectives' ranking metric (:func:`tessera.core.evaluate.ranking_metric`) is marked. Jobs ranked by different
    metrics (different objectives) have no best."""
    job_dirs = [hydra_file.parent.parent for hydra_file in sweep_dir.rglob(".hydra/hydra.yaml")]
    rows = sorted((_row(job_dir, sweep_dir, plugins) for job_dir in job_dirs), key=lambda row: row["job"])
    ranked = [r for r in rows if r["status"] == "complete" and r["metric"] and r["test"].get(r["metric"]) is not None]
    rankings = {(r["metric"], r["higher_is_better"]) for r in ranked}
    best = None
    if len(rankings) == 1:
        metric, higher = rankings.pop()
        best = (max if higher else min)(ranked, key=lambda r: r["test"][metric])
        best["best"] = True
    return {
        "sweep_dir": str(sweep_dir),
        "jobs": len(rows),
        "complete": sum(r["status"] == "complete" for r in rows),
        "failed": sum(r["status"] != "complete" for r in rows),
        "metric": {"name": best["metric"], "higher_is_better": best["higher_is_better"]} if best else None,
        "best": best["job"] if best else None,
        "rows": rows,
    }


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown(summary: dict) -> str:
    """``summary.md``: the sweep's counts, the best job and its metric, the overrides every job shares, and one table
    row per job (the overrides that differ between jobs, the status or the error, the test metrics, the directory)."""
    rows = summary["rows"]
    common = [o for o in rows[0]["overrides"] if all(o in r["overrides"] for r in rows)] if rows else []
    metrics = list(dict.fromkeys(key for row in rows for key in row["test"]))
    sweep_dir = Path(summary["sweep_dir"])
    counts = f"{summary['jobs']} jobs: {summary['complete']} complete, {summary['failed']} failed."
    if summary["best"] is not None:
        metric = summary["metric"]
        direction = "higher" if metric["higher_is_better"] else "lower"
        best = f" Best by test {metric['name']} ({direction} is better): job {summary['best']}."
    else:
        best = " No best job: no job completed with a metric, or the jobs are ranked by different metrics."
    lines = [f"# tessera sweep {sweep_dir}", "", counts + best, ""]
    if common:
        lines += [f"Overrides of every job: `{' '.join(common)}`", ""]
    lines += [
        "| job | overrides | status | " + " | ".join(metrics) + " | directory |",
        "|---|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for row in rows:
        job = f"**{row['job']} (best)**" if row["best"] else str(row["job"])
        own = " ".join(o for o in row["overrides"] if o not in common) or "-"
        state = row["status"] + (f": {row['error']}" if row["error"] else "")
        values = [_cell(row["test"].get(key)) for key in metrics]
        where = Path(row["dir"]).relative_to(sweep_dir) if Path(row["dir"]).is_relative_to(sweep_dir) else row["dir"]
        lines.append(f"| {job} | {_cell(own)} | {_cell(state)} | " + " | ".join(values) + f" | {where} |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, plugins: Plugins) -> dict:
    """Write ``summary.json`` and ``summary.md`` into ``sweep_dir`` (atomically); return the summary."""
    summary = summarize(sweep_dir, plugins)
    write_json(sweep_dir / SUMMARY_JSON, summary)
    write_text(sweep_dir / SUMMARY_MD, markdown(summary))
    return summary


class SweepSummary(Callback):
    """The Hydra callback that ends a sweep (``hydra.callbacks.sweep_summary`` in tessera's config): it writes the
    summary and exits with status 1 when a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from tessera.core.plugins import discover

        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        summary = write_summary(sweep_dir, discover())
        if summary["best"] is not None:
            best = next(row for row in summary["rows"] if row["best"])
            log.info(
                "sweep: best job %s (%s), test %s %.4f",
                best["job"],
                " ".join(best["overrides"]) or "no overrides",
                best["metric"],
                best["test"][best["metric"]],
            )
        log.info("sweep summary: %s", sweep_dir / SUMMARY_MD)
        if summary["failed"]:
            failed = [str(row["job"]) for row in summary["rows"] if row["status"] != "complete"]
            print(
                f"error: {summary['failed']} of {summary['jobs']} jobs failed (job {', '.join(failed)}): see "
                f"{sweep_dir / SUMMARY_MD}",
                file=sys.stderr,
            )
            raise SystemExit(1)
