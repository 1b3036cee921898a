"""The techniques that should help, against plain fine-tuning, in one run (MiniLM + LoRA, movie-review sentences):

**robust**: plain vs ``fgm`` vs ``freelb`` vs ``a2t``: clean test accuracy, accuracy under ``tessera eval``'s
WordNet synonym attack (MiniLM similarity >= 0.8, ``--query-budget`` queries, the first ``--attack-examples`` test
sentences), and training time relative to plain (the median step time and the train phase's seconds, each over
the plain run of the same seed). Goal: a2t at least 10 points more under attack than plain, within 1 point clean.

**lowdata**: ``--labels`` labelled sentences (100 and 500): plain vs ``eda`` (the paper's N=500 setting, as
``bench/augment_lowdata.py``) vs consistency training (``objective=[classification,consistency]``) on
``--unlabelled`` unlabelled sentences (``data.unlabelled=rest``: the training sentences beyond the labelled ones)
augmented by Apertium back-translation, and, with ``--smollm2-unlabelled N`` > 0, by SmolLM2 paraphrases of N of
them (about 9 s a sentence on this CPU, cached; not run by default). Goal: at least 3 points over plain at 500
labels, more at 100.

Every condition of a part trains for the same optimizer steps; conditions run seed by seed, so load hits them
alike. Mean, standard deviation and per-seed values over ``--seeds``; a run already complete in ``--out`` is
reused. Prints one JSON object (also written to ``--json`` when given).

Usage: ``.venv/bin/python bench/robust_lowdata.py [--parts robust lowdata] [--seeds 1 2 3] [--steps 40] ...``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adversarial import attack_report, attack_setup, step_seconds
from adversarial import base_overrides as robust_overrides
from augment_lowdata import CONDITIONS as AUGMENT_CONDITIONS
from augment_lowdata import base_overrides as lowdata_overrides
from augment_runner import accuracy, log, machine, mean_std, run_all, set_threads, train

#: The robustness conditions: the embedding adversaries at their defaults, a2t as the bench sets it.
ROBUST = {
    "plain": ["adversary=none"],
    "fgm": ["adversary=fgm"],
    "freelb": ["adversary=freelb"],
    "a2t": ["adversary=a2t"],
}
CONSISTENCY = ["objective=[classification,consistency]", "data.unlabelled=rest"]


def lowdata_conditions(args) -> dict[str, list[str]]:
    """The low-data conditions; SmolLM2 only with ``--smollm2-unlabelled`` > 0."""
    conditions = {
        "plain": ["augment=none"],
        "eda": AUGMENT_CONDITIONS["eda"],
        "consistency_backtranslate": [
            *CONSISTENCY,
            f"data.limit_unlabelled={args.unlabelled}",
            "objective.consistency.augment=backtranslate",
        ],
    }
    if args.smollm2_unlabelled > 0:
        conditions["consistency_smollm2"] = [
            *CONSISTENCY,
            f"data.limit_unlabelled={args.smollm2_unlabelled}",
            "objective.consistency.augment=backtranslate",
            "++objective.consistency.augment_options={translator: smollm2}",
        ]
    return conditions


def summarize(values: dict[str, dict[str, list]], baseline: str = "plain") -> dict:
    """``mean_std`` of every measure of every condition, plus the mean differences to ``baseline`` in points."""
    results = {}
    for name, measures in values.items():
        found = {measure: mean_std(found) for measure, found in measures.items()}
        for measure in ("clean_accuracy", "accuracy_under_attack", "test_accuracy"):
            if measure in measures and name != baseline:
                found[f"{measure}_vs_{baseline}_points"] = 100 * (
                    statistics.fmean(measures[measure]) - statistics.fmean(values[baseline][measure])
                )
        results[name] = found
    return results


def robust_part(args, root: Path) -> dict:
    plan = [(seed, name) for seed in args.seeds for name in ROBUST]

    def task(seed: int, name: str):
        def run():
            run_dir = root / "robust" / f"{name}-seed{seed}"
            metrics = train(run_dir, robust_overrides(args, seed) + ROBUST[name])
            report = attack_report(run_dir, args)
            log(f"robust {name}-seed{seed}: under attack {report['accuracy_under_attack']:.3f}")
            a2t_file = run_dir / "adversary" / "a2t.json"
            return metrics, report, json.loads(a2t_file.read_text()) if a2t_file.is_file() else None

        return run

    outcomes = dict(zip(plan, run_all([task(seed, name) for seed, name in plan], args.jobs)))
    values = {name: {} for name in ROBUST}
    attacks = {}
    for (seed, name), (metrics, report, a2t) in outcomes.items():
        plain = outcomes[seed, "plain"][0]
        measures = {
            "clean_accuracy": accuracy(metrics),
            "attack_clean_accuracy": report["clean_accuracy"],
            "accuracy_under_attack": report["accuracy_under_attack"],
            "attack_success_rate": report["attack_success_rate"],
            "mean_queries": report["mean_queries"],
            "step_time_vs_plain": step_seconds(metrics, args.batch_size) / step_seconds(plain, args.batch_size),
            "train_seconds_vs_plain": metrics["seconds"]["train"] / plain["seconds"]["train"],
            "train_seconds": metrics["seconds"]["train"],
        }
        for measure, value in measures.items():
            values[name].setdefault(measure, []).append(value)
        if a2t:
            attacks[seed] = a2t
    results = summarize(values)
    gained = results["a2t"]["accuracy_under_attack_vs_plain_points"]
    clean = results["a2t"]["clean_accuracy_vs_plain_points"]
    return {
        "setup": {
            "seeds": args.seeds,
            "train_sentences": args.train_sentences,
            "test_sentences": args.test_sentences,
            "optimizer_steps": args.steps,
            "attack": attack_setup(args),
            "conditions": ROBUST,
        },
        "results": results,
        "a2t_training_attack": attacks,
        "goal": {
            "a2t_under_attack_vs_plain_points": gained,
            "a2t_clean_vs_plain_points": clean,
            "met": gained >= 10 and clean >= -1,
        },
    }


def lowdata_part(args, root: Path) -> dict:
    conditions = lowdata_conditions(args)
    seeds = args.lowdata_seeds or args.seeds
    plan = [(labels, seed, name) for labels in args.labels for seed in seeds for name in conditions]

    def task(labels: int, seed: int, name: str):
        def run():
            run_dir = root / "lowdata" / f"{labels}-{name}-seed{seed}"
            metrics = train(run_dir, lowdata_overrides(args, seed, labels) + conditions[name])
            extra = run_dir / "consistency.json"
            return metrics, json.loads(extra.read_text()) if extra.is_file() else None

        return run

    outcomes = dict(zip(plan, run_all([task(*entry) for entry in plan], args.jobs)))
    by_labels, consistency = {}, {}
    for labels in args.labels:
        values = {name: {} for name in conditions}
        for (size, seed, name), (metrics, record) in outcomes.items():
            if size != labels:
                continue
            plain = outcomes[size, seed, "plain"][0]
            values[name].setdefault("test_accuracy", []).append(accuracy(metrics))
            values[name].setdefault("train_seconds_vs_plain", []).append(
                metrics["seconds"]["train"] / plain["seconds"]["train"]
            )
            if record:
                consistency.setdefault(f"{labels}-{name}", {})[seed] = {
                    key: record[key] for key in ("unlabelled_texts", "pairs", "masked_share")
                }
        by_labels[str(labels)] = summarize(values)
    gains = {
        labels: by_labels[labels]["consistency_backtranslate"]["test_accuracy_vs_plain_points"] for labels in by_labels
    }
    met = gains.get("500", float("-inf")) >= 3 and gains.get("100", float("-inf")) > gains.get("500", float("inf"))
    return {
        "setup": {
            "seeds": seeds,
            "labelled_sentences": args.labels,
            "unlabelled_sentences": args.unlabelled,
            "smollm2_unlabelled_sentences": args.smollm2_unlabelled,
            "test_sentences": args.test_sentences,
            "optimizer_steps": args.steps,
            "conditions": conditions,
        },
        "results": by_labels,
        "consistency": consistency,
        "not_run": {}
        if args.smollm2_unlabelled > 0
        else {"consistency_smollm2": "SmolLM2 paraphrases take about 9 s a sentence here: pass --smollm2-unlabelled N"},
        "goal": {"consistency_backtranslate_vs_plain_points": gains, "met": met},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["robust", "lowdata"], default=["robust", "lowdata"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-sentences", type=int, default=1500, help="robust part")
    parser.add_argument("--test-sentences", type=int, default=400, help="also caps validation")
    parser.add_argument("--attack-examples", type=int, default=100)
    parser.add_argument("--query-budget", type=int, default=100)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 500], help="lowdata part")
    parser.add_argument("--lowdata-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument("--unlabelled", type=int, default=1000, help="unlabelled sentences for consistency training")
    parser.add_argument("--smollm2-unlabelled", type=int, default=0, help="0: the SmolLM2 condition is not run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training / attack process")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    set_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="robust-lowdata-"))
    started = time.perf_counter()
    result = {"benchmark": "robust_lowdata", "threads": args.threads, "jobs": args.jobs, "command": sys.argv[1:]}
    if "robust" in args.parts:
        result["robust"] = robust_part(args, root)
    if "lowdata" in args.parts:
        result["lowdata"] = lowdata_part(args, root)
    result["total_seconds"] = time.perf_counter() - started
    result["machine"] = machine()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    log(f"run directories in {root}")


if __name__ == "__main__":
    main()
