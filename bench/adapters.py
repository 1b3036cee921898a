"""Adapters side by side: what each costs and what it buys, on the real packaged models.

* **MiniLM** on the sentence-polarity task (3000 training / 800 test sentences, batch 32, max_length 64, one epoch,
  seed 42, tessera's defaults otherwise): full fine-tuning, ``lora``, ``adalora``, ``dora``, ``ia3``,
  ``linear_probe``, each at a learning rate usual for it (``LEARNING_RATES``).
* **SmolLM2-135M-Instruct** as a sequence classifier on the same sentences (batch 8, max_length 64, 40 steps, test
  on the first 64 test sentences): full fine-tuning against ``lora``: memory and throughput (40 steps do not train a
  classifier: its accuracy is printed, not compared).

Each measurement runs ``tessera``'s own pipeline (compose, prepare, execute: train, evaluate, export) in a fresh
subprocess of this script (``--child``), so that its peak resident memory (``ru_maxrss`` of that process, from
``os.wait4``) is its own. Two phases:

1. **quality**: each configuration as above; the child counts the parameters that get a gradient at the first
   optimizer step (trainable) and all parameters; accuracy is the run's test accuracy. Memory and accuracy do not
   depend on what else runs, so ``--jobs N`` runs N of them at once.
2. **speed**: each configuration for ``WARMUP_STEPS + --speed-steps`` optimizer steps, one at a time, round-robin
   (interleaved) ``--speed-repeats`` times; throughput is the median over the repeats of each run's median
   per-step samples per second after the warm-up steps (``metrics.json``).

Ratios are against full fine-tuning of the same model.

Usage: ``.venv/bin/python bench/adapters.py [--jobs N] [--speed-steps 15] [--speed-repeats 3]
[--only minilm|smollm2] [--quick]``; one JSON object on stdout, progress on stderr. ``--quick`` trains on 320
sentences (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The learning rate of each technique: full fine-tuning's usual rate for MiniLM here (FACTS: 0.80 after 1 epoch),
#: tessera's default for the LoRA family, higher for the methods with very few weights.
LEARNING_RATES = {"none": 5e-5, "lora": 1e-3, "adalora": 1e-3, "dora": 1e-3, "ia3": 5e-3, "linear_probe": 5e-3}
MINILM = [
    "model=minilm",
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "data.max_length=64",
    "trainer.seed=42",
    "trainer.checkpoint_every=0",
]
SMOLLM2 = [
    "model=smollm2",
    "trainer.max_steps=40",
    "trainer.batch_size=8",
    "data.max_length=64",
    "data.limit_eval=64",
    "trainer.seed=42",
    "trainer.checkpoint_every=0",
]
SMOLLM2_RATES = {"none": 2e-5, "lora": 1e-3}
#: Steps left out of the throughput median (allocator and autocast warm-up).
WARMUP_STEPS = 3


def settings(only: str | None, quick: bool) -> dict[str, list[str]]:
    """``{setting name: tessera train overrides}`` of every configuration measured."""
    found = {}
    if only in (None, "minilm"):
        for adapter, rate in LEARNING_RATES.items():
            found[f"minilm/{adapter}"] = [*MINILM, f"adapter={adapter}", f"trainer.learning_rate={rate}"]
    if only in (None, "smollm2"):
        for adapter, rate in SMOLLM2_RATES.items():
            found[f"smollm2/{adapter}"] = [*SMOLLM2, f"adapter={adapter}", f"trainer.learning_rate={rate}"]
    if quick:
        found = {name: [*overrides, "data.limit_train=320", "data.limit_eval=64"] for name, overrides in found.items()}
    return found


# --- the child: one run ----------------------------------------------------------------------------------------


def child(overrides: list[str]) -> dict:
    """Run one configuration through tessera's pipeline in this process; return its measurements."""
    import resource

    from tessera import hookimpl
    from tessera.core.cli import compose_config, prepare_hydra
    from tessera.core.pipeline import execute, prepare
    from tessera.core.plugins import discover

    class Counter:
        """Counts the parameters at the first optimizer step: all of them, and those with a gradient."""

        counts: dict = {}

        @hookimpl
        def tessera_before_optimizer_step(self, run, model, step):
            if step == 1:
                parameters = list(model.parameters())
                self.counts = {
                    "trainable_parameters": sum(p.numel() for p in parameters if p.grad is not None),
                    "total_parameters": sum(p.numel() for p in parameters),
                }

    plugins = discover()
    prepare_hydra(plugins)
    with tempfile.TemporaryDirectory(prefix="tessera-bench-adapters-") as directory:
        run, splits = prepare(compose_config(overrides, plugins), Path(directory) / "run", plugins)
        counter = Counter()
        run.composition.plugins.manager.register(counter)
        test = execute(run, splits)
        history = json.loads((run.dir / "metrics.json").read_text())
    speeds = [step["samples_per_second"] for step in history["train"][WARMUP_STEPS:]]
    return {
        **counter.counts,
        "samples_per_second": statistics.median(speeds),
        "steps": history["steps"],
        "test_accuracy": test["accuracy"],
        "peak_rss_mib_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --- the parent: every configuration in its own process ---------------------------------------------------------


def measure(name: str, overrides: list[str]) -> dict:
    """Run one configuration in a fresh subprocess; its measurements plus its peak resident memory."""
    with tempfile.TemporaryDirectory() as directory:
        out, log = Path(directory) / "out.json", Path(directory) / "log.txt"
        with log.open("w") as sink:
            process = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(overrides), "--out", str(out)],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(process.pid, 0)
        if status != 0 or not out.is_file():
            raise SystemExit(f"{name} failed:\n{log.read_text()[-3000:]}")
        result = json.loads(out.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def summarise(quality: dict[str, dict], speed: dict[str, list[float]]) -> dict:
    """Per configuration: its quality-phase measurements and median throughput; ratios against full fine-tuning."""
    results = {}
    for name, values in quality.items():
        results[name] = {
            "trainable_parameters": values["trainable_parameters"],
            "total_parameters": values["total_parameters"],
            "trainable_fraction": values["trainable_parameters"] / values["total_parameters"],
            "peak_rss_mib": values["peak_rss_mib"],
            "test_accuracy": values["test_accuracy"],
            "steps": values["steps"],
            "samples_per_second": statistics.median(speed[name]),
            "samples_per_second_runs": speed[name],
        }
    for name, values in results.items():
        full = results.get(name.split("/")[0] + "/none")
        if full is not None and not name.endswith("/none"):
            values["vs_full"] = {
                "samples_per_second": values["samples_per_second"] / full["samples_per_second"],
                "peak_rss": values["peak_rss_mib"] / full["peak_rss_mib"],
                "trainable_parameters": values["trainable_parameters"] / full["trainable_parameters"],
                "test_accuracy_points": 100 * (values["test_accuracy"] - full["test_accuracy"]),
            }
    return results


def progress(started: float, message: str) -> None:
    """A line on stderr, stamped with the seconds since ``started``."""
    print(f"[{time.time() - started:7.0f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="quality-phase runs at once")
    parser.add_argument("--speed-steps", type=int, default=15)
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--only", choices=["minilm", "smollm2"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        Path(args.out).write_text(json.dumps(child(json.loads(args.child))))
        return 0
    configurations = settings(args.only, args.quick)
    started = time.time()

    def quality_run(name: str) -> dict:
        progress(started, f"quality: {name}")
        result = measure(name, configurations[name])
        progress(started, f"quality: {name} {json.dumps(result)}")
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        quality = dict(zip(configurations, pool.map(quality_run, configurations)))
    speed: dict[str, list[float]] = {name: [] for name in configurations}
    window = [f"trainer.max_steps={WARMUP_STEPS + args.speed_steps}", "data.limit_eval=32"]
    for repeat in range(args.speed_repeats):
        for name, overrides in configurations.items():
            speed[name].append(measure(name, [*overrides, *window])["samples_per_second"])
            progress(started, f"speed {repeat + 1}: {name} {speed[name][-1]:.2f} samples/s")
    report = {
        "benchmark": "adapters",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["bench/adapters.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": configurations,
        "results": summarise(quality, speed),
        "wall_seconds": time.time() - started,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
