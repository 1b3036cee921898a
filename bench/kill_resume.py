"""Kill and resume: SIGKILL real ``tessera train`` runs at random moments, resume each, compare with a straight run.

The runs are ``experiment=smoke`` (tiny random model, LoRA) with ``--limit-train`` training examples, ``--epochs``
epochs and a checkpoint every 2 optimizer steps, so that many kills can land inside a checkpoint write. First one
uninterrupted reference run is timed from the outside (when its first checkpoint, its final checkpoint and its
``.export.*`` directory appear, and when it exits). Then each of ``--kills`` runs is aimed at one phase, the phases
taking turns in a seeded random order:

* **training**: once a random checkpoint (not the last) appears, a random moment within one checkpoint interval
  of the reference;
* **checkpoint**: the checkpoints directory is polled every 0.5 ms and the run is killed as soon as the k-th
  ``step-NNNNNNN.partial`` directory (k random) is seen, i.e. while that checkpoint is being written;
* **evaluation**: a random moment after the final checkpoint appears, within the reference's evaluation time
  scaled by how much slower or faster than the reference this run trained;
* **export**: a random moment within 0.2 s (the smoke export's length when idle) after the ``.export.*``
  temporary directory appears.

Aims can miss on a loaded machine, so each kill is counted by the phase the run directory shows right after the
kill: ``checkpoint`` (a ``.partial`` directory is left), ``export`` (``.export.*`` or ``export/`` exists),
``evaluation`` (the final checkpoint exists), ``training`` (a checkpoint exists), ``startup`` (none yet) or
``complete`` (``run.json`` already said so). Each killed run is then resumed with ``resume=true`` (same overrides)
until it exits 0, at most 3 times, and its test metrics and training losses are compared with the reference's
(equal within 1e-6; the confusion matrix exactly).

Usage: ``.venv/bin/python bench/kill_resume.py [--kills 20] [--seed 0] [--epochs 2] [--limit-train 192]
[--workdir DIR]``. One JSON object is printed on stdout (kills by phase, resumed-ok count, mismatches, seconds);
progress goes to stderr. A kill-and-resume cycle took 45-130 s on the shared 2-core machine (4 kills: 234 s in
all at a load average of 4.4); 20 kills take 15-45 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("training", "checkpoint", "evaluation", "export")
TOLERANCE = 1e-6
MAX_RESUMES = 3
CHECKPOINT_EVERY = 2
#: About how long the smoke export takes on an idle machine (the reference's window also holds the exit).
EXPORT_SECONDS = 0.2


def settings(epochs: int, limit_train: int) -> list[str]:
    """The overrides of every run of the benchmark."""
    return [
        "experiment=smoke",
        f"data.limit_train={limit_train}",
        f"trainer.epochs={epochs}",
        f"trainer.checkpoint_every={CHECKPOINT_EVERY}",
    ]


def start(overrides: list[str], run_dir: Path, log_name: str, *extra: str) -> tuple[subprocess.Popen, object]:
    """Start ``tessera train`` in ``run_dir``, its output going to ``<run_dir>.<log_name>.log``."""
    log = open(run_dir.parent / f"{run_dir.name}.{log_name}.log", "w")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "tessera", "train", *overrides, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log


def entries(directory: Path) -> list[str]:
    """The names in ``directory`` (none when it does not exist yet)."""
    try:
        return [entry.name for entry in os.scandir(directory)]
    except FileNotFoundError:
        return []


def observed_phase(run_dir: Path, final_checkpoint: str) -> str:
    """The phase a (stopped) run is in, from what its directory holds."""
    status = run_dir / "run.json"
    if status.is_file() and json.loads(status.read_text()).get("status") == "complete":
        return "complete"
    checkpoints = entries(run_dir / "checkpoints")
    if any(name.endswith(".partial") for name in checkpoints):
        return "checkpoint"
    if any(name.startswith(".export.") or name == "export" for name in entries(run_dir)):
        return "export"
    if final_checkpoint in checkpoints:
        return "evaluation"
    return "training" if checkpoints else "startup"


def reference_run(overrides: list[str], workdir: Path) -> dict:
    """Run once uninterrupted, recording when each phase becomes visible; return its timeline and results."""
    run_dir = workdir / "reference"
    process, log = start(overrides, run_dir, "train")
    started, seen = time.perf_counter(), {}
    while process.poll() is None:
        now = time.perf_counter() - started
        for name in entries(run_dir / "checkpoints") + entries(run_dir):
            seen.setdefault(name, now)
        time.sleep(0.002)
    log.close()
    if process.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {process.returncode}): see {log.name}")
    steps = json.loads((run_dir / "metrics.json").read_text())["steps"]
    final_checkpoint = f"step-{steps:07d}"
    timeline = {
        "training": min(t for name, t in seen.items() if name.startswith("step-")),
        "evaluation": seen[final_checkpoint],
        "export": min(t for name, t in seen.items() if name.startswith(".export.")),
        "exit": time.perf_counter() - started,
    }
    return {"timeline": timeline, "steps": steps, "final_checkpoint": final_checkpoint, **results(run_dir)}


def results(run_dir: Path) -> dict:
    """The test metrics and training losses a finished run wrote."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"test": metrics["test"], "losses": [step["loss"] for step in metrics["train"]]}


def differences(got, expected, key: str = "") -> list[str]:
    """The keys at which ``got`` differs from ``expected`` (numbers by more than ``TOLERANCE``)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        return [d for k in expected.keys() | got.keys() for d in differences(got.get(k), expected.get(k), f"{key}.{k}")]
    if isinstance(expected, list) and isinstance(got, list) and len(got) == len(expected):
        return [d for i, (g, e) in enumerate(zip(got, expected)) for d in differences(g, e, f"{key}[{i}]")]
    if isinstance(expected, float) and isinstance(got, (int, float)):
        return [] if math.isclose(got, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE) else [key]
    return [] if got == expected else [key]


def wait_for(process: subprocess.Popen, ready, poll: float = 0.002) -> bool:
    """Poll until ``ready()`` holds (True) or ``process`` exits (False)."""
    while not ready():
        if process.poll() is not None:
            return False
        time.sleep(poll)
    return True


def kill_after(process: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``process`` in ``delay`` seconds; False when it exits first."""
    deadline = time.perf_counter() + delay
    if wait_for(process, lambda: time.perf_counter() >= deadline, 0.0005):
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    return False


def kill_once(
    aim: str,
    overrides: list[str],
    run_dir: Path,
    reference: dict,
    final_checkpoint: str,
    writes: int,
    rng: random.Random,
) -> tuple[bool, str]:
    """Start a run and kill it in the phase ``aim``; return (whether it was killed, the phase it died in)."""
    timeline = reference["timeline"]
    checkpoints_dir = run_dir / "checkpoints"
    process, log = start(overrides, run_dir, "train")
    if aim == "checkpoint":
        target, partials = rng.randrange(writes), set()

        def ready() -> bool:
            names = entries(checkpoints_dir)
            partials.update(name for name in names if name.endswith(".partial"))
            return len(partials) > target or final_checkpoint in names

        killed = wait_for(process, ready, poll=0.0005) and kill_after(process, 0.0)
    elif aim == "training":
        # After a random checkpoint appears, within one checkpoint interval: event-driven, whatever the load.
        after = f"step-{CHECKPOINT_EVERY * (1 + rng.randrange(writes - 1)):07d}"
        interval = (timeline["evaluation"] - timeline["training"]) / max(1, writes - 1)
        ready = wait_for(process, lambda: after in entries(checkpoints_dir))
        killed = ready and kill_after(process, rng.uniform(0, interval))
    elif aim == "evaluation":
        # The reference's evaluation time, scaled by how much slower or faster this run trained.
        first = []

        def ready() -> bool:
            names = entries(checkpoints_dir)
            if names and not first:
                first.append(time.perf_counter())
            return final_checkpoint in names

        reference_training = timeline["evaluation"] - timeline["training"]
        window = timeline["export"] - timeline["evaluation"]
        killed = False
        if wait_for(process, ready):
            scale = (time.perf_counter() - first[0]) / reference_training if first else 1.0
            killed = kill_after(process, rng.uniform(0, 0.9 * window * scale))
    else:
        window = timeline["exit"] - timeline["export"]
        ready = wait_for(process, lambda: any(n.startswith(".export.") for n in entries(run_dir)), poll=0.0005)
        killed = ready and kill_after(process, rng.uniform(0, min(EXPORT_SECONDS, window)))
    process.wait()
    log.close()
    return killed, observed_phase(run_dir, final_checkpoint)


def resume(overrides: list[str], run_dir: Path) -> tuple[int, int, str]:
    """Resume ``run_dir`` until it exits 0 (at most ``MAX_RESUMES`` times): (attempts, last exit code, the
    ``resuming from`` line or the start-over one)."""
    for attempt in range(1, MAX_RESUMES + 1):
        process, log = start(overrides, run_dir, f"resume{attempt}", "resume=true")
        process.wait()
        log.close()
        if process.returncode == 0:
            break
    lines = Path(log.name).read_text().splitlines()
    said = next(
        (
            line.split(" - ", 1)[-1]
            for line in lines
            if "resuming from" in line or "resume:" in line or "already complete" in line
        ),
        "",
    )
    return attempt, process.returncode, said


def benchmark(kills: int, seed: int, epochs: int, limit_train: int, workdir: Path) -> dict:
    """Run the reference, then ``kills`` kill-and-resume cycles; return the report."""
    rng = random.Random(seed)
    overrides = settings(epochs, limit_train)
    started = time.perf_counter()
    print("reference run...", file=sys.stderr)
    reference = reference_run(overrides, workdir)
    reference_seconds = time.perf_counter() - started
    final_checkpoint, writes = reference["final_checkpoint"], reference["steps"] // CHECKPOINT_EVERY
    aims = [PHASES[i % len(PHASES)] for i in range(kills)]
    rng.shuffle(aims)
    cycles = []
    for index, aim in enumerate(aims):
        run_dir = workdir / f"kill-{index:02d}"
        killed, phase = kill_once(aim, overrides, run_dir, reference, final_checkpoint, writes, rng)
        attempts, code, said = resume(overrides, run_dir)
        cycle = {
            "aim": aim,
            "phase": phase if killed else "exited_before_kill",
            "resumes": attempts,
            "exit": code,
            "resumed": said,
        }
        if code == 0:
            got = results(run_dir)
            cycle["mismatched"] = differences(got, {"test": reference["test"], "losses": reference["losses"]})
        cycles.append(cycle)
        print(f"kill {index + 1}/{kills}: {json.dumps(cycle)}", file=sys.stderr)
    resumed_ok = [c for c in cycles if c["exit"] == 0 and not c["mismatched"]]
    return {
        "kills": kills,
        "seed": seed,
        "settings": overrides,
        "steps": reference["steps"],
        "reference_timeline_seconds": {k: round(v, 3) for k, v in reference["timeline"].items()},
        "kills_by_aim": dict(Counter(c["aim"] for c in cycles)),
        "kills_by_phase": dict(Counter(c["phase"] for c in cycles)),
        "resumed_ok": len(resumed_ok),
        "resume_failures": [c for c in cycles if c["exit"] != 0],
        "mismatches": [c for c in cycles if c["exit"] == 0 and c["mismatched"]],
        "resumed_from": [c["resumed"] for c in cycles],
        "seconds": {"reference": round(reference_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "load_average_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the benchmark with progress on stderr, print the JSON report on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="killed runs (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run (default 2)")
    parser.add_argument("--limit-train", type=int, default=192, help="training examples (default 192: 12 steps)")
    parser.add_argument("--workdir", type=Path, help="keep the runs and their logs here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = benchmark(args.kills, args.seed, args.epochs, args.limit_train, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tessera-kill-resume-") as workdir:
            report = benchmark(args.kills, args.seed, args.epochs, args.limit_train, Path(workdir))
    print(json.dumps(report, indent=2))
    return 0 if report["resumed_ok"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
