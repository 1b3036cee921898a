"""``tessera tune`` on the movie-review sentences: does a 12-trial study beat the default composition, and how much
trial time does pruning save?

Three measurements, each a ``tessera`` command in a subprocess of this script, in a temporary directory:

1. **default**: ``tessera train`` as it is (MiniLM + LoRA, the default trainer: learning rate 1e-3, r 8, 3 epochs);
   its test accuracy.
2. **tuned**: ``tessera tune`` with ``--trials`` trials (TPE, seed 0, median pruning on the validation accuracy after
   each epoch) over the learning rate (log-uniform 1e-4 .. 3e-3), the LoRA rank (4, 8, 16) and the epochs (1 .. 4);
   the best trial's test accuracy (its own run's, scored on the same test split as the default), the sum of its
   trials' times and the study's wall time.
3. **no pruning**: the same study with ``tune.pruner=none`` (the same seed: TPE's first ten trials are the same
   random draws in both studies); the sum of its trials' times.

Goals (issue 13): the tuned configuration at least 1 point better on test than the default; pruning saving at least
30 % of the trial time at the same number of trials.

Usage: ``.venv/bin/python bench/tune.py [--trials 12] [--workers 1] [--quick] [--work DIR]``; one JSON object on stdout, progress
on stderr. ``--quick`` runs the tiny random-weight model on 64 sentences with 3 trials (a check of the script, not a
measurement).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPACE = (
    "tune.space={trainer.learning_rate:{type:loguniform,low:1e-4,high:3e-3},adapter.lora.r:[4,8,16],"
    "trainer.epochs:{type:int,low:1,high:4}}"
)
QUICK_SPACE = "tune.space={trainer.learning_rate:{type:loguniform,low:1e-4,high:3e-3},adapter.lora.r:[4,8,16],trainer.epochs:{type:int,low:1,high:2}}"
COMMON = ["trainer.checkpoint_every=0"]
QUICK = ["experiment=smoke", "data.limit_train=64", "data.limit_eval=32", "trainer.batch_size=8"]


def tessera(*args: str, cwd: Path) -> float:
    """Run ``python -m tessera ARGS`` (its output on stderr); return its wall time; exit when it fails."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tessera", *args], cwd=cwd, stdout=sys.stderr, stderr=sys.stderr)
    if result.returncode != 0:
        sys.exit(f"bench/tune.py: tessera {' '.join(args[:3])} ... failed with status {result.returncode}")
    return time.perf_counter() - started


def study(name: str, base: list[str], space: str, trials: int, workers: int, pruner: str, root: Path) -> dict:
    """Run one study; return its ``tune.json`` with the study's wall time and the sum of its trials' times."""
    directory = root / name
    seconds = tessera(
        "tune",
        *base,
        space,
        f"tune.trials={trials}",
        f"tune.workers={workers}",
        f"tune.pruner={pruner}",
        "tune.seed=0",
        f"tune.study={name}",
        f"tune.dir={directory}",
        cwd=root,
    )
    record = json.loads((directory / "tune.json").read_text())
    record["wall_seconds"] = seconds
    record["trial_seconds"] = sum(row["seconds"] or 0.0 for row in record["trials"])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, 64 sentences, 3 trials: a script check")
    parser.add_argument(
        "--limit-train", type=int, default=0, help="train every run on the first N training sentences (0: all 3000)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the runs and studies in this directory (default: a temporary one); a rerun reuses the default run and continues the studies",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads of every run (0: torch's default)")
    parser.add_argument(
        "--concurrent", action="store_true", help="run both studies at once (with --threads 1 on 2 cores)"
    )
    args = parser.parse_args()
    trials = 3 if args.quick else args.trials
    base = [*(QUICK if args.quick else []), *COMMON]
    if args.limit_train:
        base.append(f"data.limit_train={args.limit_train}")
    if args.threads:
        base.append(f"trainer.num_threads={args.threads}")
    space = QUICK_SPACE if args.quick else SPACE
    with contextlib.ExitStack() as stack:
        root = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-bench-tune-")))
        root.mkdir(parents=True, exist_ok=True)
        print("bench/tune.py: the default composition", file=sys.stderr)
        default_metrics = root / "default" / "metrics.json"
        if default_metrics.is_file():  # kept under --work by an earlier run of this script
            default_seconds = json.loads((root / "default_seconds.json").read_text())
        else:
            default_seconds = tessera("train", *base, f"hydra.run.dir={root / 'default'}", cwd=root)
            (root / "default_seconds.json").write_text(json.dumps(default_seconds))
        default = json.loads(default_metrics.read_text())["test"]
        studies = [("pruned", "median"), ("unpruned", "none")]
        if args.concurrent:  # both studies at once, sharing the cores alike
            print(f"bench/tune.py: {trials} trials with and without median pruning, at once", file=sys.stderr)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                runs = [
                    pool.submit(study, name, base, space, trials, args.workers, pruner, root)
                    for name, pruner in studies
                ]
                tuned, unpruned = (run.result() for run in runs)
        else:
            print(f"bench/tune.py: {trials} trials with median pruning, then without", file=sys.stderr)
            tuned, unpruned = (study(name, base, space, trials, args.workers, pruner, root) for name, pruner in studies)
    best, best_unpruned = tuned["best"], unpruned["best"]
    gain = 100 * (best["test"]["accuracy"] - default["accuracy"])
    saved = 1 - tuned["trial_seconds"] / unpruned["trial_seconds"]
    print(
        json.dumps(
            {
                "benchmark": "tune",
                "quick": args.quick,
                "trials": trials,
                "workers": args.workers,
                "limit_train": args.limit_train or None,
                "threads": args.threads or None,
                "concurrent": args.concurrent,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "default": {"test_accuracy": default["accuracy"], "seconds": default_seconds},
                "tuned": {
                    "best_trial": best["number"],
                    "params": best["params"],
                    "command": best["command"],
                    "validation_accuracy": best["value"],
                    "test_accuracy": best["test"]["accuracy"],
                    "counts": tuned["counts"],
                    "trial_seconds": tuned["trial_seconds"],
                    "study_seconds": tuned["wall_seconds"],
                },
                "no_pruning": {
                    "best_params": best_unpruned["params"],
                    "test_accuracy": best_unpruned["test"]["accuracy"],
                    "counts": unpruned["counts"],
                    "trial_seconds": unpruned["trial_seconds"],
                    "study_seconds": unpruned["wall_seconds"],
                },
                "gain_points": gain,
                "pruning_saved_fraction": saved,
                "goals": {"gain_at_least_1_point": gain >= 1.0, "pruning_saves_at_least_30_percent": saved >= 0.30},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
