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


def prepare(cfg: DictConfig, run_dir: Path) -> tuple[Run, Splits]:
    """Validate the whole composition (techniques, data, assets) and return the run; no heavy work."""
    composition = compose(cfg)
    splits = load_splits(cfg.data)
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
    from tessera.core.batching import tokenize
    from tessera.core.evaluate import classification_metrics, markdown_report, predict_probabilities, save_plots
    from tessera.core.export import export
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.trainer import Trainer, planned_steps

    cfg, timings = run.cfg, {}
    _status(run, "running")
    try:
        train, validation, test = splits.train, splits.validation, splits.test
        with _stage("augment", timings):
            for augmenter in run.composition.selected("augment"):
                train = augmenter.augment(train, cfg.trainer.seed)
        with _stage("kg", timings):
            for retriever in run.composition.selected("kg"):
                train, validation, test = (retriever.enrich(split, run) for split in (train, validation, test))
        run.total_steps = planned_steps(cfg.trainer, len(train))  # known before the adapters (AdaLoRA needs it)
        with _stage("model", timings):
            tokenizer = load_tokenizer(cfg.model)
            model = load_model(cfg.model, run.composition.task, splits.labels, tokenizer, cfg.trainer.seed)
            for adapter in run.composition.selected("adapter"):
                model = adapter.apply(model, run)
            for retriever in run.composition.selected("kg"):
                model = retriever.attach(model, run)
            tokenized = {
                name: tokenize(split, tokenizer, cfg.data.max_length)
                for name, split in (("train", train), ("validation", validation), ("test", test))
            }
        with _stage("train", timings):
            trainer = Trainer(run, model, tokenized["train"], tokenized["validation"], tokenizer.pad_token_id)
            model = trainer.fit()
        with _stage("evaluate", timings):
            probabilities = predict_probabilities(
                model, tokenized["test"], cfg.trainer.eval_batch_size, tokenizer.pad_token_id,
                trainer.accelerator.device,
            )
            metrics = classification_metrics(tokenized["test"].labels, probabilities, splits.labels)
            save_plots(tokenized["test"].labels, probabilities, splits.labels, run.dir)
            write_text(
                run.dir / "predictions.jsonl",
                "".join(
                    json.dumps({"text": e["text"], "label": e["label"], "prediction": int(p.argmax()),
                                "probabilities": p.tolist()}) + "\n"
                    for e, p in zip(test, probabilities)
                ),
            )
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
    _status(run, "complete", accuracy=metrics["accuracy"], seconds=timings["total"])
    run.emit("run_end", status="complete", metrics=metrics)
    return metrics


def run_job(cfg: DictConfig) -> dict:
    """The Hydra task of ``tessera train``: prepare (or discard the empty run directory on bad input), execute."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run, splits = prepare(cfg, run_dir)
    except TesseraError:
        if not cfg.resume:
            discard_unstarted(run_dir)
        raise
    if cfg.resume and (run_dir / STATUS_FILE).is_file():
        previous = json.loads((run_dir / STATUS_FILE).read_text())
        if previous["status"] == "complete":
            log.info("run %s is already complete", run_dir)
            return json.loads((run_dir / "metrics.json").read_text())["test"]
    log.info("run directory: %s", run_dir)
    log.info("composition: %s", run.composition.describe())
    return execute(run, splits)
