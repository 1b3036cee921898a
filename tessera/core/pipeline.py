"""The work of one training stage, in phases:
data -> augment -> kg enrichment -> model + adapters -> train -> evaluate -> export.

:func:`prepare` checks everything that can be checked without heavy work (the composition, the data files, the
assets) and returns the stage's :class:`~tessera.core.run.Run`; :func:`execute` runs the phases. The stage's
directory records its state in ``run.json``: ``running`` while it works, then ``complete``, ``failed`` (with the
error) or ``interrupted`` (with what ``resume=true`` will do); ``metrics.json`` and ``export/`` appear only when it
completes. The job (:mod:`tessera.core.job`) decides which stages run and where.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from tessera.core.data import Splits, load_splits
from tessera.core.files import write_json, write_text
from tessera.core.models import pretrained_path
from tessera.core.plugins import Plugins
from tessera.core.run import Run, compose

log = logging.getLogger("tessera")
STATUS_FILE = "run.json"


def prepare(cfg: DictConfig, run_dir: Path | None, plugins: Plugins, check_model: bool = True) -> tuple[Run, Splits]:
    """Validate the whole composition (techniques, data, assets) and return the run; no heavy work.

    ``check_model=False`` skips the base-model check (a stage whose model is an earlier stage's export)."""
    from tessera.core.trainer import check_trainer

    composition = compose(cfg, plugins)
    check_trainer(cfg.trainer)
    splits = load_splits(cfg.data, labelled=composition.needs_labels)
    if check_model:
        pretrained_path(cfg.model)
    run = Run(composition, run_dir)
    run.state["labels"] = splits.labels
    return run, splits


def status(directory: Path) -> dict:
    """The ``run.json`` of a stage or job directory (``{}`` when there is none)."""
    path = directory / STATUS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_status(directory: Path, state: str, **details) -> None:
    """Write ``run.json`` of a stage or job directory: ``{"status": state, **details}``, atomically."""
    write_json(directory / STATUS_FILE, {"status": state, **details})


def ended(error: BaseException, directory: Path) -> tuple[str, dict]:
    """How a stage or job in ``directory`` ended on ``error``, as ``(status, details)``: ``failed`` with the error
    in one line, or ``interrupted`` (Ctrl-C or SIGTERM) with what ``resume=true`` will do."""
    if isinstance(error, KeyboardInterrupt):
        from tessera.core.checkpoints import complete

        found = complete(directory / "checkpoints")
        where = f"its last checkpoint, {found[-1].name}" if found else "the start (no checkpoint was written)"
        return "interrupted", {"resume": f"rerun the same command with resume=true: it continues from {where}"}
    message = str(error).strip().splitlines()
    return "failed", {"error": f"{type(error).__name__}: {message[0]}" if message else type(error).__name__}


@contextmanager
def _phase(name: str, timings: dict):
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def execute(run: Run, splits: Splits) -> dict:
    """Run every phase of a prepared stage and return its test metrics."""
    from tessera.core.adapting import apply_adapters
    from tessera.core.evaluate import evaluate_objectives, markdown_report
    from tessera.core.export import export
    from tessera.core.max_length import resolve_max_length
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.trainer import Trainer, planned_steps

    cfg, timings = run.cfg, {}
    write_status(run.dir, "running", composition=run.composition.describe())
    try:
        train, validation, test = splits.train, splits.validation, splits.test
        resolve_max_length(run, train)  # before the kg phase, whose text injection keeps within it
        with _phase("augment", timings):
            for augmenter in run.composition.selected("augment"):
                train = augmenter.augment(train, cfg.trainer.seed)
        with _phase("kg", timings):
            for retriever in run.composition.selected("kg"):
                train, validation, test = (retriever.enrich(split, run) for split in (train, validation, test))
        with _phase("model", timings):
            tokenizer = load_tokenizer(cfg.model)
            items = run.composition.item_builder.items(train, tokenizer, cfg.data.max_length, cfg.trainer.seed)
            run.total_steps = planned_steps(cfg.trainer, len(items))  # known before the adapters (AdaLoRA)
            model = load_model(cfg.model, run.composition.task, splits.labels, tokenizer, cfg.trainer.seed)
            model = apply_adapters(model, run.composition.selected("adapter"), run)
            for retriever in run.composition.selected("kg"):
                model = retriever.attach(model, run)
        with _phase("train", timings):

            def validate(trained) -> dict:
                metrics = evaluate_objectives(run, trained, tokenizer, validation, "validation")
                run.events.evaluation("validation", metrics)
                return metrics

            trainer = Trainer(run, model, items, tokenizer, validate)
            model = trainer.fit()
        with _phase("evaluate", timings):
            metrics = evaluate_objectives(run, model, tokenizer, test, "test")
            run.events.evaluation("test", metrics)
        with _phase("export", timings):
            export(run, model.cpu(), tokenizer, metrics, cfg.model.pretrained)
    except BaseException as error:
        state, details = ended(error, run.dir)
        write_status(run.dir, state, composition=run.composition.describe(), **details)
        run.events.run_end(state, {})
        raise
    timings["total"] = sum(timings.values())
    write_json(
        run.dir / "metrics.json",
        {"test": metrics, "seconds": timings, "steps": run.total_steps, **trainer.history},
    )
    write_text(run.dir / "report.md", markdown_report(run.composition.describe(), metrics, timings))
    write_status(run.dir, "complete", composition=run.composition.describe(), test=metrics, seconds=timings["total"])
    run.events.run_end("complete", metrics)
    return metrics
