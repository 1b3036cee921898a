"""Domain-adaptive pretraining: test accuracy of the sentence-polarity fine-tune with and without the MLM stage.

Runs ``tessera train experiment=dapt`` (MLM on the unlabelled full reviews, then fine-tuning from that model, and
the same fine-tuning from the base model) with the first seed. The MLM stage (full fine-tuning for at most 300
steps, 236 at ``--epochs 1``; the longest part: about 15 minutes on 2 cores) then serves the other seeds, which
repeat the two fine-tunes as the experiment's stages do (``tessera train model.pretrained=<dapt export>`` and
``tessera train``); ``--pretrain-each`` runs the whole experiment for every seed instead. Prints one JSON object
with the accuracies, their mean and standard deviation, and the mean gain of the MLM stage.

    .venv/bin/python bench/dapt.py [--seeds 0 1 2] [--epochs 1] [--out /tmp/tessera-dapt] [--pretrain-each]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path


def train(run_dir: Path, overrides: list[str]) -> dict:
    """``tessera train OVERRIDES`` into ``run_dir`` (resumed when it is there); its test metrics per stage."""
    subprocess.run(
        [sys.executable, "-m", "tessera", "train", *overrides, f"hydra.run.dir={run_dir}", "resume=true"],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics["stages"] if "stages" in metrics else metrics["test"]


def run_seed(seed: int, epochs: int, out: Path, pretrained: Path | None) -> dict:
    """The whole ``experiment=dapt`` (``pretrained`` None), or its two fine-tunes from the ``pretrained`` export."""
    common = [f"trainer.seed={seed}", f"trainer.epochs={epochs}"]
    if pretrained is None:
        return train(out / f"seed-{seed}", ["experiment=dapt", *common])
    return {
        "finetune": train(out / f"seed-{seed}" / "finetune", [*common, f"model.pretrained={pretrained}"]),
        "baseline": train(out / f"seed-{seed}" / "baseline", common),
    }


def summary(values: list[float]) -> dict:
    """Mean and (sample) standard deviation."""
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs of every stage (one epoch of MLM on the full reviews: 236 steps)"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/tessera-dapt"))
    parser.add_argument("--pretrain-each", action="store_true", help="an MLM stage for every seed")
    args = parser.parse_args()
    first = args.seeds[0]
    results = {first: run_seed(first, args.epochs, args.out, None)}
    shared = None if args.pretrain_each else args.out / f"seed-{first}" / "stages" / "dapt" / "export"
    results |= {seed: run_seed(seed, args.epochs, args.out, shared) for seed in args.seeds[1:]}
    with_dapt = [results[s]["finetune"]["accuracy"] for s in args.seeds]
    without = [results[s]["baseline"]["accuracy"] for s in args.seeds]
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "seeds": args.seeds,
                "finetune_epochs": args.epochs,
                "accuracy_with_dapt": summary(with_dapt),
                "accuracy_without_dapt": summary(without),
                "mean_gain": statistics.mean(w - b for w, b in zip(with_dapt, without)),
                "mlm_stages": "one per seed" if args.pretrain_each else f"one (seed {first}), shared by every seed",
                "dapt_masked_accuracy": summary(
                    [found["dapt"]["masked_accuracy"] for found in results.values() if "dapt" in found]
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
