"""Export: a self-contained Hugging Face directory (adapters merged, safetensors, tokenizer, model card) plus
each adapter's unmerged form under ``adapters/<name>/`` where it has one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tessera.core.files import atomic_directory
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


def model_card(run: Run, metrics: dict, base: str, unmerged: list[str], notes: list[str] = ()) -> str:
    """The ``README.md`` of the export: front matter for the Hub, the composition and the test metrics."""
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
        "## Use",
        "",
        "```python",
        f"from transformers import {AUTO_CLASSES[run.composition.task]}, AutoTokenizer",
        f'model = {AUTO_CLASSES[run.composition.task]}.from_pretrained("export")',
        'tokenizer = AutoTokenizer.from_pretrained("export")',
        "```",
    ]
    if unmerged:
        lines += ["", f"Unmerged adapters (PEFT directories): {', '.join(f'adapters/{n}' for n in unmerged)}."]
    if notes:
        lines += ["", "## Adapters", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def export(run: Run, model, tokenizer, metrics: dict, base: str) -> Path:
    """Write ``<run>/export`` atomically and return it. ``model`` is the trained model with its adapters."""
    target = run.dir / "export"
    with atomic_directory(target, owned=True) as partial:
        unmerged = []
        notes = []
        for adapter in reversed(run.composition.selected("adapter")):
            if adapter.save_unmerged(model, partial / "adapters" / adapter.name):
                unmerged.append(adapter.name)
            note = adapter.export_note(model)
            if note:
                log.info("export: %s", note)
                notes.append(note)
            model = adapter.merge(model)
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(model_card(run, metrics, base, unmerged, notes), encoding="utf-8")
    run.events.export(target)
    return target
