"""Export: a self-contained model directory (adapters merged; safetensors, or the format of the last compressor),
the tokenizer and a model card, plus each adapter's unmerged form under ``adapters/<name>/`` where it has one (not
for a compressed run: the adapters describe the model before compression)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from tessera.core.models import AUTO_CLASSES
from tessera.core.run import Run

log = logging.getLogger("tessera")


#: The Hugging Face pipeline tag of each task.
PIPELINE_TAGS = {
    "sequence-classification": "text-classification",
    "masked-lm": "fill-mask",
    "pretraining": "fill-mask",
    "next-sentence": "feature-extraction",
    "causal-lm": "text-generation",
}


def model_card(
    run: Run,
    metrics: dict,
    base: str,
    unmerged: list[str],
    notes: list[str] = (),
    compression: dict | None = None,
    usage: tuple[str, ...] | None = None,
) -> str:
    """The ``README.md`` of the export: front matter for the Hub, the composition, the test metrics (of the final
    model) and, for a compressed run, the uncompressed model's figures beside the final ones."""
    composition = run.composition.describe()
    labels = run.state.get("labels") or []
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {PIPELINE_TAGS[run.composition.task]}",
        "tags: [tessera]",
        "---",
        "",
        f"# {run.cfg.model.name} fine-tuned by tessera on {run.cfg.data.name}",
        "",
        f"Base model: `{base}`." + (f" Labels: {', '.join(labels)}." if labels else ""),
        "",
        "## Composition",
        "",
        *[f"- {family}: {', '.join(names)}" for family, names in composition.items()],
        "",
        "## Test metrics",
        "",
        "```json",
        json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2),
        "```",
        "",
    ]
    if compression:
        lines += compression_section(metrics, compression)
    lines += [
        "## Use",
        "",
        "```python",
        *(
            usage
            or (
                f"from transformers import {AUTO_CLASSES[run.composition.task]}, AutoTokenizer",
                f'model = {AUTO_CLASSES[run.composition.task]}.from_pretrained("export")',
                'tokenizer = AutoTokenizer.from_pretrained("export")',
            )
        ),
        "```",
    ]
    if unmerged:
        lines += ["", f"Unmerged adapters (PEFT directories): {', '.join(f'adapters/{n}' for n in unmerged)}."]
    if notes:
        lines += ["", "## Adapters", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def compression_section(metrics: dict, compression: dict) -> list[str]:
    """The model card's table of the uncompressed and the final model (the ``compression`` of ``metrics.json``)."""
    before, after = compression.get("uncompressed", {}), compression["compressed"]
    rows = [("size on disk (MB)", "size_bytes", 1e-6), ("parameters", "parameters", 1)]
    rows += [("sparsity of linear weights", "sparsity", 1), ("sentences per second", "sentences_per_second", 1)]
    scalar = [
        k for k, v in metrics.items() if isinstance(v, float) and isinstance(before.get("test", {}).get(k), float)
    ]

    def cell(value, scale=1):
        if value is None:
            return "-"
        return f"{value * scale:.4g}" if isinstance(value, float) or scale != 1 else f"{value:,}"

    lines = [
        "## Compression",
        "",
        f"Chain: {', '.join(compression['chain'])}; export format: {compression['format']}; "
        + ("served by `tessera serve` (vLLM)." if compression["servable"] else compression["served_by"]),
        "",
        "| | uncompressed | final |",
        "|---|---|---|",
        *[f"| test {key} | {cell(before['test'][key])} | {cell(metrics[key])} |" for key in scalar],
        *[
            f"| {label} | {cell(before.get(key), scale)} | {cell(after.get(key), scale)} |"
            for label, key, scale in rows
        ],
        "",
    ]
    return lines


def fold_adapters(run: Run, model, unmerged_dir: Path | None) -> tuple[object, list[str], list[str]]:
    """Merge the run's adapters into ``model`` (in reverse config order) and return ``(model, unmerged, notes)``:
    the plain model, the adapters written unmerged to ``unmerged_dir/<name>`` (None: write none) and the adapters'
    notes for the model card."""
    unmerged, notes = [], []
    for adapter in reversed(run.composition.selected("adapter")):
        if unmerged_dir is not None and adapter.save_unmerged(model, unmerged_dir / adapter.name):
            unmerged.append(adapter.name)
        note = adapter.export_note(model)
        if note:
            log.info("export: %s", note)
            notes.append(note)
        model = adapter.merge(model)
    return model, unmerged, notes


def write_export(partial: Path, run: Run, model, tokenizer, export_format, card: Callable[[], str]) -> None:
    """Write the model (by ``export_format``), the tokenizer and the model card (``card()``, called after the
    weights are written, so it can give their size) into the export's temporary directory ``partial``."""
    export_format.save(model, tokenizer, partial)
    tokenizer.save_pretrained(partial)
    (partial / "README.md").write_text(card(), encoding="utf-8")
