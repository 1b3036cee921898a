"""Evaluation: predictions, classification metrics, the confusion matrix and ROC curve, and a Markdown report."""

from __future__ import annotations

import math
from pathlib import Path

from tessera.core.batching import collate, model_inputs, sequential_batches

#: Tasks whose loss is a per-token cross-entropy, reported with its perplexity.
LANGUAGE_MODEL_TASKS = ("masked-lm", "causal-lm")


def model_device(model):
    """The device of the model's parameters (the CPU for a model without any, as an ONNX Runtime session)."""
    import torch

    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def eval_batches(run, model, tokenizer, items: list[dict]):
    """Collated batches of ``items`` on the model's device, in order (evaluation batch size of the run)."""
    device = model_device(model)
    for indices in sequential_batches(items, run.cfg.trainer.eval_batch_size):
        yield indices, collate(items, indices, tokenizer.pad_token_id, device)


def predict_probabilities(run, model, tokenizer, items: list[dict]):
    """Class probabilities (a float64 numpy array, one row per item) of a sequence classifier."""
    import torch

    model.eval()
    chunks = []
    with torch.inference_mode():
        for _, batch in eval_batches(run, model, tokenizer, items):
            logits = model(**model_inputs(batch)).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).double().cpu())
    return torch.cat(chunks).numpy()


def evaluation_passes(run, objective, model, tokenizer, examples: list[dict]):
    """``(batch, outputs)`` over the objective's items of ``examples``, without gradients; the objective's
    transform is seeded per batch, so the passes repeat exactly."""
    import torch

    items = objective.items(examples, tokenizer, run.cfg.data.max_length, run.cfg.trainer.seed)
    model.eval()
    with torch.inference_mode():
        for position, (_, batch) in enumerate(eval_batches(run, model, tokenizer, items)):
            batch = objective.transform(batch, tokenizer, torch.Generator().manual_seed(position))
            yield batch, model(**model_inputs(batch))


def mean_loss(run, objective, model, tokenizer, examples: list[dict]) -> float:
    """The objective's mean loss over the batches of ``examples``."""
    losses = [
        objective.loss(outputs, batch).item()
        for batch, outputs in evaluation_passes(run, objective, model, tokenizer, examples)
    ]
    return sum(losses) / max(len(losses), 1)


def evaluate_objectives(run, model, tokenizer, examples: list[dict], split: str) -> dict:
    """The metrics of every objective of the run on ``examples``; with several objectives each metric is
    prefixed by the objective's name (``mlm_loss``, ``nsp_accuracy``)."""
    if not examples:
        return {}
    objectives = run.composition.selected("objective")
    metrics = {}
    for objective in objectives:
        found = objective.evaluate(run, model, tokenizer, examples, split)
        if "loss" not in found:
            found = {"loss": mean_loss(run, objective, model, tokenizer, examples), **found}
        if objective.task in LANGUAGE_MODEL_TASKS:
            found["perplexity"] = math.exp(min(found["loss"], 50.0))
        prefix = f"{objective.name}_" if len(objectives) > 1 else ""
        metrics.update({prefix + key: value for key, value in found.items()})
    return metrics


def ranking_metric(objectives: list) -> tuple[str, bool]:
    """The test metric that ranks runs of ``objectives`` (classes or instances, in config order) against each other,
    as :func:`evaluate_objectives` names it, and whether higher is better: the ``metric`` of the objective that
    builds the training items."""
    builder = next((o for o in objectives if not o.rides_along), objectives[0])
    prefix = f"{builder.name}_" if len(objectives) > 1 else ""
    return prefix + builder.metric, builder.higher_is_better


def classification_metrics(labels: list[int], probabilities, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, macro precision and recall, ROC AUC (one-vs-rest when more than two classes)."""
    import numpy as np
    from sklearn import metrics

    y_true = np.asarray(labels)
    y_pred = probabilities.argmax(axis=1)
    classes = list(range(len(label_names)))
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average="macro", zero_division=0
    )
    result = {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "roc_auc": None,
        "examples": int(len(y_true)),
    }
    if len(set(y_true.tolist())) == len(classes):
        if len(classes) == 2:
            result["roc_auc"] = float(metrics.roc_auc_score(y_true, probabilities[:, 1]))
        else:
            result["roc_auc"] = float(metrics.roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes))
    result["confusion_matrix"] = metrics.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    return result


def classification_report(run, examples: list[dict], probabilities, split: str) -> dict:
    """The classification metrics and loss of ``probabilities`` (one row per example) against the examples' labels;
    for ``test`` also the confusion matrix and ROC curve (PNG) and ``predictions.jsonl`` in the run directory."""
    import json

    import numpy as np

    from tessera.core.files import write_text

    labels = [e["label"] for e in examples]
    label_names = run.state["labels"]
    metrics = classification_metrics(labels, probabilities, label_names)
    metrics["loss"] = float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12))))
    if split == "test":
        save_plots(labels, probabilities, label_names, run.dir)
        rows = (
            {"text": e["text"], "label": e["label"], "prediction": int(p.argmax()), "probabilities": p.tolist()}
            for e, p in zip(examples, probabilities)
        )
        write_text(run.dir / "predictions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return metrics


def save_plots(labels: list[int], probabilities, label_names: list[str], directory: Path) -> list[Path]:
    """Write ``confusion_matrix.png`` and ``roc_curve.png`` into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn import metrics

    y_true = np.asarray(labels)
    written = []
    figure, axis = plt.subplots(figsize=(4.5, 4))
    metrics.ConfusionMatrixDisplay.from_predictions(
        y_true,
        probabilities.argmax(axis=1),
        labels=list(range(len(label_names))),
        display_labels=label_names,
        ax=axis,
        colorbar=False,
    )
    axis.set_title("Confusion matrix (test)")
    figure.tight_layout()
    written.append(directory / "confusion_matrix.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.5, 4))
    for index, name in enumerate(label_names if len(label_names) > 2 else label_names[1:]):
        class_index = index if len(label_names) > 2 else 1
        if len(set((y_true == class_index).tolist())) == 2:
            metrics.RocCurveDisplay.from_predictions(
                y_true == class_index, probabilities[:, class_index], name=name, ax=axis
            )
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axis.set_title("ROC curve (test)")
    figure.tight_layout()
    written.append(directory / "roc_curve.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)
    return written


def markdown_report(composition: dict, metrics: dict, timings: dict) -> str:
    """A short Markdown report of the composition, the test metrics and the time each stage took."""
    lines = ["# tessera run report", "", "## Composition", ""]
    lines += [f"- **{family}**: {', '.join(names)}" for family, names in composition.items()]
    lines += ["", "## Test metrics", "", "| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if value is None or isinstance(value, (int, float)):
            lines.append(
                f"| {key} | {'n/a' if value is None else (f'{value:.4f}' if isinstance(value, float) else value)} |"
            )
    if "confusion_matrix" in metrics:
        lines += ["", "![confusion matrix](confusion_matrix.png) ![ROC curve](roc_curve.png)"]
    lines += ["", "## Time", ""]
    lines += [f"- {stage}: {seconds:.1f} s" for stage, seconds in timings.items()]
    return "\n".join(lines) + "\n"
