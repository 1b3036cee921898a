"""The work of one training stage, in phases: data -> augment -> kg enrichment -> model (compressors' ``prepare``,
adapters) -> train -> evaluate -> merge adapters -> compress -> evaluate the compressed model again -> export.

:func:`prepare` checks everything that can be checked without heavy work (the composition, the data files, the
assets) and returns the stage's :class:`~tessera.core.run.Run`; :func:`execute` runs the phases. The stage's
directory records its state in ``run.json``: ``running`` while it works, then ``complete``, ``failed`` (with the
error) or ``interrupted`` (with what ``resume=true`` will do); ``metrics.json`` and ``export/`` appear only when it
completes. The job (:mod:`tessera.core.job`) decides which stages run and where.

On several processes (:mod:`tessera.core.distributed`) every rank builds the data and the model and trains; rank 0
alone evaluates, compresses, exports and writes the stage's files, and every rank waits for it at the stage's end.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from tessera.core import distributed
from tessera.core.compression import HUGGINGFACE, weights_on_disk
from tessera.core.data import Splits, load_splits
from tessera.core.errors import ConfigError
from tessera.core.export import fold_adapters, model_card, write_export
from tessera.core.files import atomic_directory, write_json, write_text
from tessera.core.models import pretrained_path
from tessera.core.plugins import Plugins
from tessera.core.run import Run, compose

log = logging.getLogger("tessera")
STATUS_FILE = "run.json"


def prepare(
    cfg: DictConfig,
    run_dir: Path | None,
    plugins: Plugins,
    check_model: bool = True,
    earlier_stages: dict[str, Path | None] | None = None,
    earlier_bases: dict[str, str] | None = None,
) -> tuple[Run, Splits]:
    """Validate the whole composition (techniques, data, assets) and return the run; no heavy work.

    ``check_model=False`` skips the base-model check (a stage whose model is an earlier stage's export);
    ``earlier_stages``: ``{name: export directory}`` of the job's stages before this one; ``earlier_bases``:
    ``{name: the base model.pretrained its model descends from}`` of the same stages."""
    from tessera.core.trainer import check_trainer

    composition = compose(cfg, plugins, earlier_stages, earlier_bases)
    if cfg.data.get("unlabelled") and not any(o.reads_unlabelled for o in composition.selected("objective")):
        raise ConfigError(
            f"data.unlabelled={cfg.data.unlabelled} is read only by objective=consistency: "
            "select objective=[classification,consistency] or drop data.unlabelled"
        )
    check_trainer(cfg.trainer)
    distributed.check_composition(composition, cfg.trainer)
    splits = load_splits(cfg.data, labelled=composition.needs_labels)
    if composition.selected("aggregator"):
        from tessera.federated.partition import check_clients

        check_clients(cfg.federated.clients, len(splits.train))
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
    """Write ``run.json`` of a stage or job directory: ``{"status": state, **details}``, atomically (rank 0 alone
    on several processes)."""
    if distributed.is_main():
        write_json(directory / STATUS_FILE, {"status": state, **details})


def ended(error: BaseException, directory: Path) -> tuple[str, dict]:
    """How a stage or job in ``directory`` ended on ``error``, as ``(status, details)``: ``failed`` with the error
    in one line, or ``interrupted`` (Ctrl-C or SIGTERM) with what ``resume=true`` will do."""
    if isinstance(error, KeyboardInterrupt):
        from tessera.core.checkpoints import complete

        found = complete(directory / "checkpoints") or complete(directory / "rounds", "round-*")
        where = f"its last checkpoint, {found[-1].name}" if found else "the start (no checkpoint was written)"
        return "interrupted", {"resume": f"rerun the same command with resume=true: it continues from {where}"}
    message = str(error).strip().splitlines()
    return "failed", {"error": f"{type(error).__name__}: {message[0]}" if message else type(error).__name__}


@contextmanager
def phase(name: str, timings: dict):
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def execute(run: Run, splits: Splits) -> dict:
    """Run every phase of a prepared stage (a training stage, or an ensemble stage that consumes its members'
    exports) and return the final model's test metrics."""
    from tessera.core.evaluate import markdown_report

    timings: dict[str, float] = {}
    main = distributed.is_main()
    training = {} if run.composition.selected("ensemble") else {"training": distributed.describe_batch(run.cfg.trainer)}
    write_status(run.dir, "running", composition=run.composition.describe(), **training)
    try:
        if run.composition.selected("ensemble") and not main:
            metrics, record = {}, {}  # rank 0 alone combines the members
        elif run.composition.selected("ensemble"):
            from tessera.core.ensembling import ensemble_stage

            metrics, record = ensemble_stage(run, splits, timings)
        elif run.composition.selected("aggregator"):
            from tessera.federated.stage import federated_stage

            metrics, record = federated_stage(run, splits, timings)
        else:
            metrics, record = _training_stage(run, splits, timings)
    except BaseException as error:
        state, details = ended(error, run.dir)
        write_status(run.dir, state, composition=run.composition.describe(), **details)
        run.events.run_end(state, {})
        raise
    timings["total"] = sum(timings.values())
    if main:
        write_json(run.dir / "metrics.json", {"test": metrics, **training, **record, "seconds": timings})
        write_text(run.dir / "report.md", markdown_report(run.composition.describe(), metrics, timings))
    write_status(
        run.dir,
        "complete",
        composition=run.composition.describe(),
        **training,
        test=metrics,
        seconds=timings["total"],
    )
    run.events.run_end("complete", metrics)
    distributed.barrier()  # the next stage may start from this one's export
    return distributed.from_main(metrics)


@dataclass
class Built:
    """A stage's data and model, ready to train: the three splits after augmentation and knowledge enrichment, the
    tokenizer, the training items and the model with its compressors' ``prepare``, adapters and retrievers."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    tokenizer: object
    items: list[dict]
    model: object


def build(run: Run, splits: Splits, timings: dict, evaluation: bool = True) -> Built:
    """The phases before training: augment, kg enrichment, then the model (``timings`` gets each phase's time).
    ``evaluation=False`` (a federated client, which only trains) leaves validation and test as they were loaded."""
    from tessera.core.adapting import apply_adapters
    from tessera.core.max_length import resolve_max_length
    from tessera.core.models import load_model, load_tokenizer
    from tessera.core.trainer import planned_steps

    cfg = run.cfg
    train, validation, test = splits.train, splits.validation, splits.test
    resolve_max_length(run, train)  # before the kg phase, whose text injection keeps within it
    with phase("augment", timings):
        for augmenter in run.composition.selected("augment"):
            train = augmenter.augment(train, cfg.trainer.seed)
    with phase("kg", timings):
        for retriever in run.composition.selected("kg"):
            train = retriever.enrich(train, run)
            if evaluation:
                validation, test = (retriever.enrich(split, run) for split in (validation, test))
    with phase("model", timings):
        tokenizer = load_tokenizer(cfg.model)
        items = run.composition.item_builder.items(train, tokenizer, cfg.data.max_length, cfg.trainer.seed)
        run.total_steps = planned_steps(cfg.trainer, len(items))  # known before the adapters (AdaLoRA)
        model = load_model(cfg.model, run.composition.task, splits.labels, tokenizer, cfg.trainer.seed)
        for compressor in run.composition.selected("compress"):
            model = compressor.prepare(model, run)
        model = apply_adapters(model, run.composition.selected("adapter"), run)
        for retriever in run.composition.selected("kg"):
            model = retriever.attach(model, run)
    return Built(train, validation, test, tokenizer, items, model)


def evaluate_test(run: Run, model, tokenizer, test: list[dict], timings: dict) -> dict:
    """The trained model's test metrics (the ``evaluate`` phase and its ``tessera_evaluation`` event)."""
    from tessera.core.evaluate import evaluate_objectives

    with phase("evaluate", timings):
        metrics = evaluate_objectives(run, model, tokenizer, test, "test")
        run.events.evaluation("test", metrics)
    return metrics


def _training_stage(run: Run, splits: Splits, timings: dict) -> tuple[dict, dict]:
    """Train, evaluate, compress and export; return the final test metrics and the rest of ``metrics.json``."""
    from tessera.core.evaluate import evaluate_objectives
    from tessera.core.trainer import Trainer

    built = build(run, splits, timings)
    model, tokenizer, items, validation = built.model, built.tokenizer, built.items, built.validation
    with phase("train", timings):

        def validate(trained) -> dict:
            metrics = evaluate_objectives(run, trained, tokenizer, validation, "validation")
            run.events.evaluation("validation", metrics)
            return metrics

        trainer = Trainer(run, model, items, tokenizer, validate)
        model = trainer.fit()
    if not distributed.is_main():
        return {}, {}  # rank 0 alone evaluates, compresses and exports
    metrics = evaluate_test(run, model, tokenizer, built.test, timings)
    metrics, record = export_model(
        run, model, tokenizer, items, built.test, metrics, timings, drift_data=(built.train, validation)
    )
    return metrics, {**record, "steps": run.total_steps, **trainer.history}


def export_model(
    run: Run,
    model,
    tokenizer,
    items: list[dict],
    test: list[dict],
    metrics: dict,
    timings: dict,
    drift_data: tuple[list[dict], list[dict]] | None = None,
):
    """Merge the adapters, run the post-training compressors (evaluating the final model again on ``test``) and
    write ``export/``; return the final test metrics and ``{"compression": ...}`` for ``metrics.json`` (empty
    without compressors). ``items`` are the training items the calibration sample is drawn from; ``drift_data``
    (the training and validation examples) makes a classifier's drift reference
    (:mod:`tessera.monitor.reference`)."""
    compressors = run.composition.selected("compress")
    target = run.dir / "export"
    with atomic_directory(target, owned=True) as partial:
        with phase("merge", timings):
            if not compressors:
                model = model.cpu()
            model, unmerged, notes = fold_adapters(run, model, None if compressors else partial / "adapters")
        compression = None
        if compressors:
            model, metrics, compression = _compress(run, model, tokenizer, items, test, metrics, timings)
        with phase("export", timings):
            export_format = compression.pop("export_format") if compression else HUGGINGFACE

            def card() -> str:
                if compression:
                    compression["compressed"]["size_bytes"] = weights_on_disk(partial)
                return model_card(
                    run, metrics, run.cfg.model.pretrained, unmerged, notes, compression, export_format.usage
                )

            write_export(partial, run, model, tokenizer, export_format, card)
        if drift_data is not None:
            from tessera.monitor.reference import write_reference

            with phase("drift_reference", timings):
                write_reference(partial, run, model, tokenizer, *drift_data)
    run.events.export(target)
    return metrics, ({"compression": compression} if compression else {})


def _compress(run: Run, model, tokenizer, items, test, uncompressed: dict, timings: dict):
    """The compression phase: measure the merged model, run the post-training compressors, evaluate the final model
    again on ``test`` and measure it. Returns ``(final model, its test metrics, the compression record)``."""
    from tessera.core.compression import compress, inference_throughput, parameter_stats, state_dict_bytes
    from tessera.core.evaluate import evaluate_objectives

    with phase("compress", timings):
        before = {"test": uncompressed, "size_bytes": state_dict_bytes(model), **parameter_stats(model)}
        before["sentences_per_second"] = inference_throughput(run, model, tokenizer, test)
        final, export_format, details = compress(run, model, tokenizer, items)
    metrics = uncompressed
    if details:  # a post-training compressor changed the model: the final model is evaluated again
        with phase("evaluate_compressed", timings):
            metrics = evaluate_objectives(run, final, tokenizer, test, "test")
            run.events.evaluation("compressed", metrics)
    after = {**parameter_stats(final), "sentences_per_second": inference_throughput(run, final, tokenizer, test)}
    record = {
        "chain": [compressor.name for compressor in run.composition.selected("compress")],
        "format": export_format.name,
        "servable": export_format.not_servable is None,
        "served_by": export_format.not_servable or "tessera serve (vLLM)",
        "techniques": details,
        **({"uncompressed": before} if details else {}),
        "compressed": after,
        "export_format": export_format,
    }
    return final, metrics, record
