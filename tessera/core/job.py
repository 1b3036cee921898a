"""A job: the stages of one ``tessera train`` command, validated together before any work, run in order, each
status written.

A single run is a job of one stage whose directory is the run directory. A multi-stage job (``stages:`` in the
config, as ``experiment=dapt``) runs each stage in ``<run>/stages/<name>/`` with the job's config plus the stage's
overrides, and writes the job's own ``run.json`` (its status and each stage's), ``metrics.json`` (every stage's test
metrics) and ``report.md`` (them side by side). A stage's model starts from the base model (``init: base``), the
export of the stage before it (``init: previous``) or the export of any earlier stage named there
(``init: dapt``).

Every way a job can end is written: ``complete``; ``failed`` (the error, and for a multi-stage job the stage);
``interrupted`` (Ctrl-C or SIGTERM: what ``resume=true`` will do). ``resume=true`` skips the stages that are
complete and continues the one that stopped from its last checkpoint.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tessera.core import distributed
from tessera.core.errors import ConfigError, TesseraError
from tessera.core.files import write_json, write_text
from tessera.core.pipeline import ended, execute, prepare, status, write_status
from tessera.core.plugins import Plugins

log = logging.getLogger("tessera")
BASE = "base"


@dataclass
class Stage:
    """A planned stage: its name, where its model starts (``base`` or an earlier stage's name), its composed config
    and its directory (None while the job is only validated)."""

    name: str
    init: str
    cfg: DictConfig
    dir: Path | None


def plan(
    cfg: DictConfig, overrides: list[str], compose: Callable[[list[str]], DictConfig], run_dir: Path | None
) -> list[Stage]:
    """The stages of the job ``cfg`` (composed from ``overrides``; ``compose`` maps overrides to a config)."""
    if not cfg.stages:
        return [Stage("run", BASE, cfg, run_dir)]
    stages: list[Stage] = []
    for entry in cfg.stages:
        name, earlier = entry.name, [stage.name for stage in stages]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"stage name '{name}' is not a directory name: use letters, digits, '_', '.' or '-'")
        if name in earlier:
            raise ConfigError(f"two stages are named '{name}': give each stage its own name")
        init = earlier[-1] if entry.init == "previous" and earlier else entry.init
        if init == "previous":
            raise ConfigError(f"stage '{name}' is the first stage: it cannot start from a previous one (init: base)")
        if init != BASE and init not in earlier:
            later = [e.name for e in cfg.stages]
            reason = "runs after it" if init in later else "is not a stage of this job"
            raise ConfigError(
                f"stage '{name}' has init: {init}, which {reason}: use base, previous or an earlier stage "
                f"({', '.join(earlier) or 'none yet'})"
            )
        stage_cfg = compose([*overrides, *entry.overrides, "stages=[]"])
        stages.append(Stage(name, init, stage_cfg, run_dir / "stages" / name if run_dir else None))
    return stages


def validate(stages: list[Stage], plugins: Plugins) -> None:
    """Check every stage's composition and data before any stage runs (no heavy work)."""
    for position, stage in enumerate(stages):
        prepare(
            stage.cfg,
            None,
            plugins,
            check_model=stage.init == BASE,
            earlier_stages=earlier(stages, position),
            earlier_bases=earlier_bases(stages, position),
        )


def earlier(stages: list[Stage], position: int) -> dict[str, Path | None]:
    """``{name: export directory}`` of the stages before ``stages[position]`` (None for a stage without a
    directory: a job that is only validated)."""
    return {stage.name: stage.dir / "export" if stage.dir else None for stage in stages[:position]}


def earlier_bases(stages: list[Stage], position: int) -> dict[str, str]:
    """``{name: model.pretrained}`` of the base model each stage before ``stages[position]`` descends from, followed
    through ``init`` (its export has that model's tokenizer)."""
    bases: dict[str, str] = {}
    for stage in stages[:position]:
        bases[stage.name] = stage.cfg.model.pretrained if stage.init == BASE else bases[stage.init]
    return bases


def discard_unstarted(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own files, so no refused job looks like a run."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def sigterm_interrupts():
    """Turn SIGTERM into ``KeyboardInterrupt`` while the block runs (a job, a study, a deployment), so a terminated
    command records ``interrupted`` and stops what it started."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Job:
    """The stages of one job and the plugins they run with (the job owns them; nothing reaches for a global).
    ``discard_refused``: remove the run directory of a job its validation refuses (a sweep keeps its job's, so the
    summary lists it)."""

    def __init__(self, stages: list[Stage], run_dir: Path, plugins: Plugins, discard_refused: bool = True):
        self.stages, self.dir, self.plugins = stages, run_dir, plugins
        self.discard_refused = discard_refused

    @property
    def multi_stage(self) -> bool:
        """Whether the job has stages of its own (rather than one run in its directory)."""
        return self.stages[0].dir != self.dir

    def run(self) -> dict:
        """Validate every stage, then run them; return the test metrics (``{stage: metrics}`` for several)."""
        resume = bool(self.stages[0].cfg.resume)
        try:
            validate(self.stages, self.plugins)
        except TesseraError:
            if self.discard_refused and not resume and distributed.is_main():
                discard_unstarted(self.dir)
            raise
        if distributed.launched():
            from tessera.core.trainer import resolve_device

            distributed.start(resolve_device(self.stages[0].cfg.trainer)[0])
        with sigterm_interrupts():
            if not self.multi_stage:
                return self._run_stage(self.stages[0])
            return self._run_stages()

    def _run_stages(self) -> dict:
        names = [stage.name for stage in self.stages]
        write_status(
            self.dir,
            "running",
            stages={name: status(self.dir / "stages" / name).get("status", "planned") for name in names},
        )
        results = {}
        for stage in self.stages:
            try:
                results[stage.name] = self._run_stage(stage)
            except BaseException as error:
                state, details = ended(error, stage.dir)
                write_status(self.dir, state, stage=stage.name, stages=self._statuses(), **details)
                raise
        if distributed.is_main():
            write_json(self.dir / "metrics.json", {"stages": results})
            write_text(self.dir / "report.md", comparison(results))
        write_status(self.dir, "complete", stages=self._statuses(), test=results)
        return results

    def _statuses(self) -> dict[str, str]:
        return {stage.name: status(stage.dir).get("status", "planned") for stage in self.stages}

    def _run_stage(self, stage: Stage) -> dict:
        """Run one stage in its directory (skipped when ``resume=true`` finds it complete)."""
        cfg = stage.cfg
        if cfg.resume and status(stage.dir).get("status") == "complete":
            log.info("%s is already complete: skipped", f"stage {stage.name}" if self.multi_stage else "the run")
            return status(stage.dir)["test"]
        if stage.init != BASE:
            start = self.dir / "stages" / stage.init / "export"
            cfg = OmegaConf.merge(cfg, {"model": {"pretrained": str(start), "random_init": False}})
        stage.dir.mkdir(parents=True, exist_ok=True)
        if self.multi_stage and distributed.is_main():
            write_text(stage.dir / "config.yaml", OmegaConf.to_yaml(cfg))
        position = self.stages.index(stage)
        run, splits = prepare(
            cfg,
            stage.dir,
            self.plugins,
            check_model=stage.init == BASE,
            earlier_stages=earlier(self.stages, position),
            earlier_bases=earlier_bases(self.stages, position),
        )
        log.info("%s directory: %s", "stage " + stage.name if self.multi_stage else "run", stage.dir)
        log.info("composition: %s", run.composition.describe())
        return execute(run, splits)


def comparison(results: dict[str, dict]) -> str:
    """A Markdown table of the stages' scalar test metrics, one column per stage."""
    keys = [
        key
        for key in dict.fromkeys(k for metrics in results.values() for k in metrics)
        if all(isinstance(m.get(key), (int, float)) or m.get(key) is None for m in results.values())
    ]
    lines = [
        "# tessera multi-stage report",
        "",
        "| metric | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for key in keys:
        cells = [results[name].get(key) for name in results]
        lines.append(f"| {key} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"
