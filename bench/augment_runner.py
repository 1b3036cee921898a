"""Shared by the robustness benchmarks (``augment_lowdata.py``, ``adversarial.py``): run ``tessera train`` and
``tessera eval`` as a user would, in a subprocess of this checkout, and read what they wrote; mean and standard
deviation over seeds."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def set_threads(count: int) -> None:
    """Torch threads of every later subprocess (``OMP_NUM_THREADS``): 1 keeps a loaded machine from thrashing."""
    ENV["OMP_NUM_THREADS"] = str(count)


def tessera(*args: str) -> None:
    """Run ``python -m tessera ARGS`` from this checkout; raise with the error's last lines if it fails."""
    done = subprocess.run([sys.executable, "-m", "tessera", *args], cwd=REPO, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tessera {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def train(run_dir: Path, overrides: list[str]) -> dict:
    """Train one composition into ``run_dir``; return ``metrics.json`` plus the wall time as ``wall_seconds``.
    A run already complete in ``run_dir`` (a benchmark restarted with the same ``--out``) is reused as it is."""
    started = time.perf_counter()
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["wall_seconds"] = metrics["seconds"]["total"]
        log(f"{run_dir.name}: reused")
        return metrics
    tessera("train", *overrides, f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - started
    log(f"{run_dir.name}: test accuracy {accuracy(metrics):.4f} ({metrics['wall_seconds']:.0f} s)")
    return metrics


def composition(args, seed: int, train_sentences: int) -> list[str]:
    """The overrides every robustness benchmark's conditions share: MiniLM + LoRA on the first ``train_sentences``
    movie-review sentences, ``args.steps`` optimizer steps of ``args.batch_size`` (``args``: the benchmark's
    ``--test-sentences``, ``--max-length``, ``--batch-size``, ``--steps`` and ``--learning-rate``)."""
    return [
        "model=minilm",
        "adapter=lora",
        "data=movie_reviews",
        f"data.limit_train={train_sentences}",
        f"data.limit_eval={args.test_sentences}",
        f"data.max_length={args.max_length}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.epochs=1000",
        f"trainer.max_steps={args.steps}",
        f"trainer.learning_rate={args.learning_rate}",
        f"trainer.seed={seed}",
        "trainer.checkpoint_every=0",
    ]


def accuracy(metrics: dict) -> float:
    """Test accuracy of a run (``classification_accuracy`` when several objectives share the run)."""
    test = metrics["test"]
    return test["accuracy"] if "accuracy" in test else test["classification_accuracy"]


def run_all(tasks: list, jobs: int) -> list:
    """Call every task (a function of no arguments) with ``jobs`` of them running at once, in list order; return
    their results in that order. Tasks are listed seed by seed, so the conditions of a seed run side by side."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda task: task(), tasks))


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mean_std(values: list[float]) -> dict:
    """``{"mean", "std", "values"}`` (sample standard deviation; 0 for one value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
    }
