"""Adversarial training: plain vs ``fgm`` vs ``pgd`` vs ``freelb`` (MiniLM + LoRA on the movie-review sentences):
clean test accuracy, accuracy under the WordNet synonym attack of ``tessera eval``, and training cost per optimizer
step relative to plain training, over seeds.

Every condition trains for the same number of optimizer steps on the same sentences. The cost per step is the
median over steps of the step time the trainer records (``batch_size / samples_per_second``), divided by the
median of the plain run of the same seed. The attack is ``tessera eval RUN attack=synonym`` on the first
``--attack-examples`` test sentences with ``--query-budget`` queries each and the MiniLM similarity constraint.
Conditions run seed by seed (with ``--jobs`` > 1, several at once: the per-step cost ratios then share the
machine alike, but their absolute times grow).

Usage: ``.venv/bin/python bench/adversarial.py [--steps 40] [--seeds 1 2 3] [--out DIR] ...``; prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from augment_runner import composition, log, machine, mean_std, run_all, set_threads, tessera, train

CONDITIONS = {  # each adversary at its built-in defaults (epsilon 0.05; pgd and freelb: step_size 0.02, 3 steps)
    "plain": ["adversary=none"],
    "fgm": ["adversary=fgm"],
    "pgd": ["adversary=pgd"],
    "freelb": ["adversary=freelb"],
}


def step_seconds(metrics: dict, batch_size: int) -> float:
    """Median seconds per optimizer step of a run, from its training history."""
    return statistics.median(batch_size / step["samples_per_second"] for step in metrics["train"])


def base_overrides(args, seed: int) -> list[str]:
    """The composition every condition shares (MiniLM + LoRA on ``--train-sentences`` movie-review sentences)."""
    return composition(args, seed, args.train_sentences)


def attack_setup(args) -> dict:
    """The attack's settings, as the JSON records them."""
    return {
        "kind": "synonym",
        "examples": args.attack_examples,
        "query_budget": args.query_budget,
        "similarity": "minilm >= 0.8",
        "max_perturbed": 0.25,
    }


def attack_report(run_dir: Path, args) -> dict:
    """``tessera eval RUN attack=synonym`` on the first ``--attack-examples`` test sentences (reused when done)."""
    report_file = run_dir / "attack" / "synonym" / "report.json"
    if not report_file.is_file():
        tessera(
            "eval",
            str(run_dir),
            "attack=synonym",
            f"examples={args.attack_examples}",
            f"query_budget={args.query_budget}",
        )
    return json.loads(report_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-sentences", type=int, default=1500)
    parser.add_argument("--test-sentences", type=int, default=400, help="also caps validation")
    parser.add_argument("--attack-examples", type=int, default=100)
    parser.add_argument("--query-budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training / attack process")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    set_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="adversarial-"))
    started = time.perf_counter()
    conditions = {name: CONDITIONS[name] for name in ["plain", *args.conditions] if name in CONDITIONS}
    plan = [(seed, name) for seed in args.seeds for name in conditions]

    def task(seed: int, name: str):
        def run():
            run_dir = root / f"{name}-seed{seed}"
            metrics = train(run_dir, base_overrides(args, seed) + conditions[name])
            report = attack_report(run_dir, args)
            log(f"{name}-seed{seed}: under attack {report['accuracy_under_attack']:.3f}")
            return metrics, report

        return run

    outcomes = dict(zip(plan, run_all([task(seed, name) for seed, name in plan], args.jobs)))
    found = {name: {"clean": [], "attacked": [], "success": [], "cost": [], "step_seconds": []} for name in conditions}
    for (seed, name), (metrics, report) in outcomes.items():
        seconds = step_seconds(metrics, args.batch_size)
        found[name]["clean"].append(metrics["test"]["accuracy"])
        found[name]["attacked"].append(report["accuracy_under_attack"])
        found[name]["success"].append(report["attack_success_rate"])
        found[name]["step_seconds"].append(seconds)
        found[name]["cost"].append(seconds / step_seconds(outcomes[seed, "plain"][0], args.batch_size))
    results = {
        name: {
            "clean_test_accuracy": mean_std(values["clean"]),
            "accuracy_under_synonym_attack": mean_std(values["attacked"]),
            "attack_success_rate": mean_std(values["success"]),
            "cost_per_step_vs_plain": mean_std(values["cost"]),
            "median_step_seconds": mean_std(values["step_seconds"]),
        }
        for name, values in found.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "adversarial",
                "setup": {
                    "model": "minilm + lora (r=16, all-linear)",
                    "train_sentences": args.train_sentences,
                    "test_sentences": args.test_sentences,
                    "optimizer_steps": args.steps,
                    "batch_size": args.batch_size,
                    "max_length": args.max_length,
                    "seeds": args.seeds,
                    "threads": args.threads,
                    "jobs": args.jobs,
                    "learning_rate": args.learning_rate,
                    "attack": attack_setup(args),
                    "conditions": conditions,
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
