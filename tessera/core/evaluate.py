"""Evaluation: predictions, classification metrics, the confusion matrix and ROC curve, and a Markdown report."""

from __future__ import annotations

from pathlib import Path

from tessera.core.batching import TokenizedSplit, collate, sequential_batches


def predict_probabilities(model, split: TokenizedSplit, batch_size: int, pad_id: int, device):
    """Class probabilities (a float64 numpy array, one row per example) of ``model`` on ``split``."""
    import torch

    model.eval()
    chunks = []
    with torch.inference_mode():
        for indices in sequential_batches(split, batch_size):
            batch = collate(split, indices, pad_id, device)
            batch.pop("labels")
            logits = model(**batch).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).double().cpu())
    return torch.cat(chunks).numpy()


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
            result["roc_auc"] = float(
                metrics.roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes)
            )
    result["confusion_matrix"] = metrics.confusion_matrix(y_true, y_pred, labels=classes).tolist()
    return result


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
        y_true, probabilities.argmax(axis=1), labels=list(range(len(label_names))),
        display_labels=label_names, ax=axis, colorbar=False,
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
    for key in ("accuracy", "macro_f1", "precision", "recall", "roc_auc", "examples"):
        value = metrics.get(key)
        lines.append(f"| {key} | {'n/a' if value is None else (f'{value:.4f}' if isinstance(value, float) else value)} |")
    lines += ["", "![confusion matrix](confusion_matrix.png) ![ROC curve](roc_curve.png)", "", "## Time", ""]
    lines += [f"- {stage}: {seconds:.1f} s" for stage, seconds in timings.items()]
    return "\n".join(lines) + "\n"
