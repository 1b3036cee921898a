"""Distributed training throughput: one process with 2 threads against 2 processes (DDP over gloo) with 1 thread each.

The workload is the main job's composition (MiniLM + LoRA on the movie-review sentences, ``data.max_length=64``),
trained by tessera's Trainer for ``--steps`` timed optimizer steps after ``WARMUP_STEPS`` untimed ones, at the same
effective batch (``--batch`` examples a step: ``trainer.batch_size`` of ``--batch`` on one process, half of it on
each of two). Contenders, each a fresh process started by this script (the set-up and the timing are those of
``bench/train_throughput.py``: ``prepare_workload``, ``run_tessera`` and its ``tessera_step_end`` window):

* **one_process_2_threads**: ``trainer.processes=1 trainer.num_threads=2``;
* **two_processes_1_thread**: ``trainer.processes=2`` under ``torchrun --standalone --nproc-per-node 2``, one torch
  thread each (rank 0's window is reported; the ranks step together);
* **one_process_1_thread**: ``trainer.processes=1 trainer.num_threads=1``, the base of the scaling efficiency.

Reported: the samples per second of each contender per repeat and their medians; ``ratio_two_processes_vs_one``
(two processes over one process with both threads: what splitting the same cores into ranks gains or loses) and
``scaling_efficiency`` (two processes over twice one single-threaded process: 1.0 is linear scaling). The
contenders run interleaved in each repeat; on a shared machine read the paired ratios, not the absolute numbers.

Usage: ``.venv/bin/python bench/distributed.py [--steps N] [--repeats N] [--batch N]``, on a machine with at least
2 free cores and without ``taskset`` limiting the script to one core (the contenders would then share it). One JSON object is printed on
stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import WARMUP_STEPS, machine, prepare_workload, run_tessera, tessera_source  # noqa: E402

#: The contenders: ``{name: (processes, torch threads per process)}``.
CONTENDERS = {
    "one_process_2_threads": (1, 2),
    "two_processes_1_thread": (2, 1),
    "one_process_1_thread": (1, 1),
}
#: The line of a worker's output that carries its measurement.
RESULT_PREFIX = "tessera-bench-distributed: "


def worker(steps: int, batch: int, processes: int, threads: int) -> None:
    """One contender's run, inside its own process (one rank of a torchrun launch for two processes): rank 0
    prints its measurement."""
    import torch
    import transformers

    from tessera.core.cli import prepare_hydra
    from tessera.core.distributed import is_main
    from tessera.core.plugins import discover

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    plugins = discover()
    prepare_hydra(plugins)
    overrides = [
        "adapter=lora",
        f"trainer.batch_size={batch // processes}",
        f"trainer.processes={processes}",
        f"trainer.num_threads={threads}",
    ]
    workload = prepare_workload("lora", overrides, steps, plugins)
    measured = run_tessera(workload)
    if is_main():
        samples = steps * batch  # every timed step is a whole batch of the effective size (one epoch, trimmed)
        row = {
            "samples_per_second": samples / measured.seconds,
            "seconds": measured.seconds,
            "cpu_seconds_rank0": measured.cpu_seconds,
            "samples": samples,
            "mixed_precision": measured.mixed_precision,
            "torch_threads": torch.get_num_threads(),
        }
        print(RESULT_PREFIX + json.dumps(row), flush=True)


def run_contender(processes: int, threads: int, steps: int, batch: int) -> dict:
    """Start one contender in fresh processes and return its measurement."""
    script = [str(Path(__file__).resolve()), "--worker", f"--steps={steps}", f"--batch={batch}"]
    script += [f"--processes={processes}", f"--threads={threads}"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    found = subprocess.run([sys.executable, *launcher, *script], capture_output=True, text=True, env=env)
    lines = [line for line in found.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if found.returncode != 0 or not lines:
        raise SystemExit(f"the {processes}-process contender failed:\n{found.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def benchmark(steps: int, repeats: int, batch: int) -> dict:
    """Every contender ``repeats`` times, interleaved; the medians and ratios."""
    runs = {name: [] for name in CONTENDERS}
    for repeat in range(repeats):
        for name, (processes, threads) in CONTENDERS.items():
            measured = run_contender(processes, threads, steps, batch)
            runs[name].append(measured)
            print(
                f"[{repeat + 1}/{repeats}] {name:<23} {measured['samples_per_second']:7.2f} samples/s",
                file=sys.stderr,
                flush=True,
            )
    medians = {name: statistics.median(r["samples_per_second"] for r in rows) for name, rows in runs.items()}
    paired = [
        two["samples_per_second"] / one["samples_per_second"]
        for two, one in zip(runs["two_processes_1_thread"], runs["one_process_2_threads"])
    ]
    efficiency = [
        two["samples_per_second"] / (2 * single["samples_per_second"])
        for two, single in zip(runs["two_processes_1_thread"], runs["one_process_1_thread"])
    ]
    return {
        "contenders": {
            name: {"processes": CONTENDERS[name][0], "threads_per_process": CONTENDERS[name][1]} for name in runs
        },
        "samples_per_second_median": medians,
        "ratio_two_processes_vs_one": medians["two_processes_1_thread"] / medians["one_process_2_threads"],
        "paired_ratios_two_processes_vs_one": paired,
        "scaling_efficiency": medians["two_processes_1_thread"] / (2 * medians["one_process_1_thread"]),
        "paired_scaling_efficiency": efficiency,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the flags; run the benchmark (or, with ``--worker``, one contender) and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="effective batch size (default 32, even)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch % 2:
        parser.error("--batch must be even (two processes share it)")
    if args.worker:
        worker(args.steps, args.batch, args.processes, args.threads)
        return 0
    started, load_before = time.perf_counter(), os.getloadavg()
    result = benchmark(args.steps, args.repeats, args.batch)
    report = {
        "machine": machine(),
        "tessera": tessera_source(),
        "workload": "MiniLM + LoRA (adapter=lora), movie-review sentences, data.max_length=64",
        "effective_batch_size": args.batch,
        "steps": args.steps,
        "warmup_steps": WARMUP_STEPS,
        "repeats": args.repeats,
        **result,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
