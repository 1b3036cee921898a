"""Domain-adaptive pretraining: test accuracy of the sentence-polarity fine-tune with and without the MLM stage.

Runs ``tessera train experiment=dapt`` (MLM on the unlabelled full reviews, then fine-tuning from that model, and
the same fine-tuning from the base model) for each seed, and prints one JSON object with the accuracies, their
mean and standard deviation, and the mean gain of the MLM stage.

    .venv/bin/python bench/dapt.py [--seeds 0 1 2] [--epochs 1] [--out /tmp/tessera-dapt]
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


def run_seed(seed: int, epochs: int, out: Path) -> dict:
    """One ``experiment=dapt`` run; its stages' test metrics."""
    run_dir = out / f"seed-{seed}"
    subprocess.run(
        [sys.executable, "-m", "tessera", "train", "experiment=dapt", f"trainer.seed={seed}",
         f"trainer.epochs={epochs}", f"hydra.run.dir={run_dir}", "resume=true"],
        check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
    )
    return json.loads((run_dir / "metrics.json").read_text())["stages"]


def summary(values: list[float]) -> dict:
    """Mean and (sample) standard deviation."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of both fine-tunes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tessera-dapt"))
    args = parser.parse_args()
    results = {seed: run_seed(seed, args.epochs, args.out) for seed in args.seeds}
    with_dapt = [results[s]["finetune"]["accuracy"] for s in args.seeds]
    without = [results[s]["baseline"]["accuracy"] for s in args.seeds]
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seeds": args.seeds,
        "finetune_epochs": args.epochs,
        "accuracy_with_dapt": summary(with_dapt),
        "accuracy_without_dapt": summary(without),
        "mean_gain": statistics.mean(w - b for w, b in zip(with_dapt, without)),
        "dapt_masked_accuracy": summary([results[s]["dapt"]["masked_accuracy"] for s in args.seeds]),
    }, indent=2))


if __name__ == "__main__":
    main()
