"""The stages of one ``tessera train`` job, in order:
data -> augment -> kg enrichment -> model + adapters -> train -> evaluate -> compress -> ensemble -> export.

Everything that can be checked without heavy work (the composition, the data files, the assets) is checked in
:func:`prepare` before the first stage. The run directory records its state in ``run.json``
(``running`` / ``complete`` / ``failed``); ``metrics.json`` and ``export/`` appear only when a run completes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from tessera.core.data import Splits, load_splits
from tessera.core.errors import TesseraError
from tessera.core.files import write_json, write_text
from tessera.core.models import pretrained_path
from tessera.core.run import Run, compose

log = logging.getLogger("tessera")
STATUS_FILE = "run.json"


def prepare(cfg: DictConfig, run_dir: Path | None, check_model: bool = True) -> tuple[Run, Splits]:
    """Validate the whole composition (techniques, data, assets) and return the run; no heavy work.

    ``check_model=False`` skips the base-model check (a stage whose model is the previous stage's export)."""
    from tessera.core.trainer import check_trainer

    composition = compose(cfg)
    check_trainer(cfg.trainer)
    splits = load_splits(cfg.data, labelled=composition.needs_labels)
    if check_model:
        pretrained_path(cfg.model)
    run = Run(composition, run_dir)
    run.state["labels"] = splits.labels
    return run, splits


def discard_unstarted(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own files, so no failed run looks like a run."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def _stage(name: str, timings: dict):
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def _status(run: Run, status: str, **extra) -> None:
    write_json(run.dir / STATUS_FILE, {"status": status, "composition": run.composition.describe(), **extra})


def execute(run: Run, splits: Splits) -> dict:
    """Run every stage of a prepared run and return its test metrics."""
    from tessera.core.adapting import apply_adapters
    from tessera.core.evaluate import evaluate_objectives, markdown_report
    from tessera.core.export import export
    from tessera.core.max_length import resolve_max_length
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.trainer import Trainer, planned_steps

    cfg, timings = run.cfg, {}
    _status(run, "running")
    try:
        train, validation, test = splits.train, splits.validation, splits.test
        resolve_max_length(run, train)  # before the kg stage, whose text injection keeps within it
        with _stage("augment", timings):
            for augmenter in run.composition.selected("augment"):
                train = augmenter.augment(train, cfg.trainer.seed)
        with _stage("kg", timings):
            for retriever in run.composition.selected("kg"):
                train, validation, test = (retriever.enrich(split, run) for split in (train, validation, test))
        with _stage("model", timings):
            tokenizer = load_tokenizer(cfg.model)
            items = run.composition.item_builder.items(train, tokenizer, cfg.data.max_length, cfg.trainer.seed)
            run.total_steps = planned_steps(cfg.trainer, len(items))  # known before the adapters (AdaLoRA)
            model = load_model(cfg.model, run.composition.task, splits.labels, tokenizer, cfg.trainer.seed)
            model = apply_adapters(model, run.composition.selected("adapter"), run)
            for retriever in run.composition.selected("kg"):
                model = retriever.attach(model, run)
        with _stage("train", timings):
            def validate(trained) -> dict:
                metrics = evaluate_objectives(run, trained, tokenizer, validation, "validation")
                run.emit("evaluation", split="validation", metrics=metrics)
                return metrics

            trainer = Trainer(run, model, items, tokenizer, validate)
            model = trainer.fit()
        with _stage("evaluate", timings):
            metrics = evaluate_objectives(run, model, tokenizer, test, "test")
            run.emit("evaluation", split="test", metrics=metrics)
        with _stage("compress", timings):
            for compressor in run.composition.selected("compress"):
                model = compressor.compress(model, run)
        with _stage("ensemble", timings):
            for ensembler in run.composition.selected("ensemble"):
                model = ensembler.combine(model, run)
        with _stage("export", timings):
            export(run, model.cpu(), tokenizer, metrics, cfg.model.pretrained)
    except BaseException:
        _status(run, "failed")
        run.emit("run_end", status="failed", metrics={})
        raise
    timings["total"] = sum(timings.values())
    write_json(
        run.dir / "metrics.json",
        {"test": metrics, "seconds": timings, "steps": run.total_steps, **trainer.history},
    )
    write_text(run.dir / "report.md", markdown_report(run.composition.describe(), metrics, timings))
    _status(run, "complete", test=metrics, seconds=timings["total"])
    run.emit("run_end", status="complete", metrics=metrics)
    return metrics


def run_single(cfg: DictConfig, run_dir: Path, check_model: bool = True) -> dict:
    """Prepare and execute one run in ``run_dir`` (skipped when ``resume=true`` finds it complete); on bad input
    the run directory is removed unless it is being resumed."""
    status_file = run_dir / STATUS_FILE
    if cfg.resume and status_file.is_file() and json.loads(status_file.read_text())["status"] == "complete":
        log.info("run %s is already complete", run_dir)
        return json.loads((run_dir / "metrics.json").read_text())["test"]
    try:
        run, splits = prepare(cfg, run_dir, check_model)
    except TesseraError:
        if not cfg.resume:
            discard_unstarted(run_dir)
        raise
    log.info("run directory: %s", run_dir)
    log.info("composition: %s", run.composition.describe())
    return execute(run, splits)


def run_job(cfg: DictConfig) -> dict:
    """The Hydra task of ``tessera train``: one run, or the stages of a multi-stage experiment."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from tessera.core import stages

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if not cfg.stages:
        return run_single(cfg, run_dir)
    planned = stages.plan(cfg, list(hydra_cfg.overrides.task), lambda o: compose("config", overrides=o))
    stages.validate(planned)
    return stages.run(planned, run_dir)
