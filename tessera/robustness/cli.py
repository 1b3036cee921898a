"""``tessera eval RUN_DIR [key=value ...]``: the accuracy of a trained run's export, clean and under attack.

It loads ``RUN_DIR/export`` (the Hugging Face directory a complete run writes) and the split the run was tested
on (rebuilt from ``RUN_DIR/.hydra/config.yaml``), runs each requested attack (see
:mod:`tessera.robustness.attacks`) and writes, atomically, ``RUN_DIR/attack/<attack>/report.json`` (the
metrics and the options) and ``examples.jsonl`` (every example: original and adversarial text, predictions,
status). The options are the fields of :class:`~tessera.robustness.attacks.AttackConfig`, type-checked::

    tessera eval outputs/2026-11-30/10-00-00 attack=synonym examples=200 query_budget=200
    tessera eval RUN_DIR attack=synonym,charnoise similarity=none
    tessera eval RUN_DIR attack=synonym query_budget=100 min_similarity=0.85 min_word_similarity=0.5
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from tessera.core.errors import ConfigError, DataError
from tessera.robustness.attacks import ATTACKS, AttackConfig


def parse(argv: list[str]) -> tuple[Path, AttackConfig]:
    """``RUN_DIR`` and the options from ``argv``; a bad option raises a one-line ``ConfigError``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    positional = [arg for arg in argv if "=" not in arg]
    if len(positional) != 1:
        raise ConfigError(
            "usage: tessera eval RUN_DIR [attack=synonym|charnoise|synonym,charnoise|none] [key=value ...]"
        )
    try:
        options = OmegaConf.merge(
            OmegaConf.structured(AttackConfig), OmegaConf.from_dotlist([arg for arg in argv if "=" in arg])
        )
    except OmegaConfBaseException as error:
        valid = ", ".join(f.name for f in dataclasses.fields(AttackConfig))
        raise ConfigError(f"{str(error).splitlines()[0]}: the options of tessera eval are {valid}") from None
    config = OmegaConf.to_object(options)
    attacks_of(config)  # refuses an unknown attack now, before any loading
    if config.similarity not in ("minilm", "none"):
        raise ConfigError(f"similarity={config.similarity}: choose minilm or none")
    if config.query_budget < 1 or not 0 < config.max_perturbed <= 1 or (config.examples or 1) < 1:
        raise ConfigError("query_budget and examples must be 1 or more, max_perturbed in (0, 1]")
    if not (0 <= config.min_similarity <= 1 and 0 <= config.min_word_similarity <= 1):
        raise ConfigError("min_similarity and min_word_similarity are cosine similarities: set them in [0, 1]")
    return Path(positional[0]).expanduser(), config


def attacks_of(config: AttackConfig) -> list[str]:
    """The attacks ``config.attack`` names, in order (empty for ``none``)."""
    names = [name.strip() for name in config.attack.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in ATTACKS]
    if unknown or not names:
        raise ConfigError(f"attack={config.attack}: choose {', '.join(ATTACKS)}, a comma list of them, or none")
    return names


def load_run(run_dir: Path, split: str):
    """The run's saved config, its export directory and the examples of ``split``."""
    from omegaconf import OmegaConf

    from tessera.core.data import load_splits

    export, saved = run_dir / "export", run_dir / ".hydra" / "config.yaml"
    if not (export / "config.json").is_file() or not saved.is_file():
        raise DataError(
            f"{run_dir} is not a complete tessera run (no export/ or .hydra/config.yaml): "
            "point tessera eval at the directory of a finished `tessera train`"
        )
    cfg = OmegaConf.load(saved)
    splits = load_splits(cfg.data)
    if split not in ("train", "validation", "test"):
        raise ConfigError(f"split={split}: choose train, validation or test")
    return cfg, export, splits, getattr(splits, split)


def evaluate(run_dir: Path, config: AttackConfig) -> dict:
    """Run the attacks of ``config`` on ``run_dir``'s export; write and return ``{attack: report}``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tessera.core.files import atomic_directory
    from tessera.robustness.attacks import GreedyAttack, SentenceEncoder, Victim, summarize

    kinds = attacks_of(config)
    cfg, export, splits, examples = load_run(run_dir, config.split)
    examples = examples[: config.examples]
    architectures = AutoConfig.from_pretrained(export).architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise DataError(
            f"{export} is a {', '.join(architectures) or 'model'} without a classification head: tessera eval "
            "attacks classifiers (runs trained with objective=classification)"
        )
    model = AutoModelForSequenceClassification.from_pretrained(export, dtype=torch.float32)
    exported = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if exported != list(splits.labels):
        raise DataError(f"{export} predicts labels {exported}, the run's data has {splits.labels}: re-export the run")
    victim = Victim(model, AutoTokenizer.from_pretrained(export), cfg.data.max_length, config.batch_size)
    needs_encoder = config.similarity == "minilm" or config.min_word_similarity > 0
    encoder = SentenceEncoder(config.batch_size) if "synonym" in kinds and needs_encoder else None
    reports = {}
    for kind in kinds or ["none"]:
        if kind == "none":
            probabilities = victim.probabilities([e["text"] for e in examples])
            correct = sum(int(p.argmax() == e["label"]) for p, e in zip(probabilities, examples))
            reports[kind] = {"examples": len(examples), "clean_accuracy": correct / len(examples) if examples else None}
            continue
        attack = GreedyAttack(kind, victim, config, encoder)
        results = [attack.run(e["text"], e["label"]) for e in examples]
        report = {"attack": kind, "run": str(run_dir), **summarize(results), "options": dataclasses.asdict(config)}
        with atomic_directory(run_dir / "attack" / kind) as partial:
            (partial / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            (partial / "examples.jsonl").write_text(
                "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in results),
                encoding="utf-8",
            )
        reports[kind] = report
    return reports


def main(argv: list[str]) -> int:
    """Entry point of ``tessera eval``: prints the reports as JSON."""
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        print("options (defaults):", json.dumps(dataclasses.asdict(AttackConfig())))
        return 0
    run_dir, config = parse(argv)
    print(json.dumps(evaluate(run_dir, config), indent=2))
    sys.stdout.flush()
    return 0
