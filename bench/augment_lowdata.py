"""Low-data augmentation: 500 training sentences of the movie-review set, MiniLM + LoRA, with no augmentation,
``eda``, ``backtranslate`` (Apertium English <-> Spanish) and ``kg_substitute``; test accuracy over 3 seeds.

Every condition trains for the same number of optimizer steps (``--steps``, batch 32), so augmentation changes
what the model sees, not how long it trains: without augmentation that is several epochs over the 500 sentences.
EDA uses the paper's recommendation for N=500 (alpha 0.05, 16 copies; Wei & Zou 2019 report about +3 points
there, averaged over five tasks, with RNN/CNN classifiers trained from scratch). The seed also seeds the
augmentation. Conditions are interleaved (seed by seed) so machine load hits them alike.

Usage: ``.venv/bin/python bench/augment_lowdata.py [--steps 40] [--batch-size 32] [--seeds 1 2 3] [--out DIR]``; prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from augment_runner import composition, log, machine, mean_std, run_all, set_threads, train

CONDITIONS = {
    "none": ["augment=none"],
    "eda": [
        "augment=eda",
        "augment.eda.copies=16",
        "augment.eda.alpha_sr=0.05",
        "augment.eda.alpha_ri=0.05",
        "augment.eda.alpha_rs=0.05",
        "augment.eda.p_rd=0.05",
    ],
    "backtranslate": ["augment=backtranslate", "augment.backtranslate.translator=apertium"],
    "kg_substitute": ["augment=kg_substitute", "augment.kg_substitute.copies=4"],
}


def base_overrides(args, seed: int, labelled: int = 500) -> list[str]:
    """The composition shared by every condition, on the first ``labelled`` training sentences."""
    return composition(args, seed, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--test-sentences", type=int, default=400, help="also caps validation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training / attack process")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    set_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="augment-lowdata-"))
    started = time.perf_counter()
    plan = [(seed, name) for seed in args.seeds for name in CONDITIONS]

    def task(seed: int, name: str):
        def run():
            run_dir = root / f"{name}-seed{seed}"
            metrics = train(run_dir, base_overrides(args, seed) + CONDITIONS[name])
            reports = list((run_dir / "augment").glob("*.json"))
            examples = json.loads(reports[0].read_text())["examples_out"] if reports else 500
            return metrics["test"]["accuracy"], examples, metrics["wall_seconds"]

        return run

    outcomes = run_all([task(seed, name) for seed, name in plan], args.jobs)
    found: dict[str, dict[str, list]] = {name: {"accuracy": [], "examples": [], "seconds": []} for name in CONDITIONS}
    for (_, name), (accuracy, examples, seconds) in zip(plan, outcomes):
        found[name]["accuracy"].append(accuracy)
        found[name]["examples"].append(examples)
        found[name]["seconds"].append(seconds)
    baseline = mean_std(found["none"]["accuracy"])["mean"]
    results = {
        name: {
            "test_accuracy": mean_std(values["accuracy"]),
            "delta_vs_none_points": 100 * (mean_std(values["accuracy"])["mean"] - baseline),
            "training_examples": values["examples"][0],
            "mean_wall_seconds": mean_std(values["seconds"])["mean"],
        }
        for name, values in found.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "augment_lowdata",
                "setup": {
                    "model": "minilm + lora (r=16, all-linear)",
                    "train_sentences": 500,
                    "test_sentences": args.test_sentences,
                    "optimizer_steps": args.steps,
                    "batch_size": args.batch_size,
                    "max_length": args.max_length,
                    "seeds": args.seeds,
                    "threads": args.threads,
                    "jobs": args.jobs,
                    "learning_rate": args.learning_rate,
                    "conditions": {name: overrides for name, overrides in CONDITIONS.items()},
                },
                "results": results,
                "total_seconds": time.perf_counter() - started,
                "machine": machine(),
            },
            indent=2,
        )
    )
    log(f"run directories in {root}")


if __name__ == "__main__":
    main()
