"""Ensembles side by side: three seeds of the movie-review classifier, merged and combined every way tessera can.

Each repetition trains (or reuses) three members with the main job's composition (MiniLM + LoRA on the movie-review
sentences, ``tessera train trainer.seed=S``), repetition ``r`` using seeds ``3r+1, 3r+2, 3r+3``, then runs
``tessera ensemble METHOD MEMBER MEMBER MEMBER`` for every method of :data:`METHODS` that is registered (the others
are listed under ``not_registered``; a method that refuses these members records its one-line refusal). Every
system is compared on the same test split: accuracy and macro-F1 (from its run's ``metrics.json``, measured by
tessera on the whole test split), weights on disk (the served model: a merged model is one member's size, an
output-space ensemble all its members'), and sentences per second at batch 32 through transformers in-process on the
first ``--throughput-sentences`` test sentences (an output-space ensemble runs each member then its method's
``combine``), the median of ``--rounds`` rounds, the systems interleaved in alternating order. Ratios are against
the best member of the repetition (by test accuracy).

Goals, over the ``--seeds`` repetitions (mean and standard deviation): the best ensemble at least 1 accuracy point
above the best member; a merged (weight-space) model at the speed of one member (at least 0.9x the members' median
throughput); ``greedy_soup`` never below the best member on the validation split (measured here, in-process).

Peer (``--mergekit PYTHON``): mergekit's ``linear`` merge of the same three members, run by a Python that has
mergekit installed (a separate virtual environment: it is not one of tessera's dependencies, and is LGPL-3.0-only),
timed and measured like the others; without it the JSON says why it was not run. mergekit 0.1.5 runs beside
tessera's pins from a virtual environment that sees tessera's packages::

    .venv/bin/python -m venv /tmp/mergekit-venv
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > /tmp/mergekit-venv/lib/python3.11/site-packages/tessera-venv.pth
    /tmp/mergekit-venv/bin/pip install --no-deps mergekit==0.1.5 immutables

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ensemble.py                     # 3 repetitions, 9 members trained
    HF_HUB_OFFLINE=1 .venv/bin/python bench/ensemble.py --seeds 1 --limit-train 256 --limit-eval 128   # a check

Runs are kept under ``--work`` and reused when complete, so a second invocation only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
#: The methods compared, weight-space then output-space, in the order of the report.
METHODS = ("linear", "greedy_soup", "task_arithmetic", "ties", "dare", "slerp", "average", "vote", "stacking")
#: The weight files of a served model (adapter copies under ``adapters/`` are not served).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tessera(verb: str, run_dir: Path, arguments: list[str]) -> tuple[Path, str | None]:
    """Run ``tessera VERB ARGUMENTS hydra.run.dir=RUN_DIR`` unless a complete run is there; return the run
    directory and None, or the error line of a refusal (exit status 2)."""
    command = [sys.executable, "-m", "tessera", verb, *arguments, f"hydra.run.dir={run_dir}"]
    return run_or_reuse(run_dir, command, f"tessera {verb} {' '.join(arguments)}")


def run_or_reuse(run_dir: Path, command: list[str], what: str) -> tuple[Path, str | None]:
    """Run ``command`` (which writes the tessera run ``run_dir``) unless a complete run is there; return the run
    directory and None, or the error line of a refusal (exit status 2)."""
    status = run_dir / "run.json"
    if status.is_file() and json.loads(status.read_text()).get("status") == "complete":
        log(f"reusing {run_dir}")
        return run_dir, None
    if run_dir.exists():
        shutil.rmtree(run_dir)
    log(what)
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO
    )
    if result.returncode == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        return run_dir, errors[-1] if errors else result.stderr.strip().splitlines()[-1]
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    log(f"  done in {time.perf_counter() - started:.0f} s")
    return run_dir, None


def served_megabytes(directory: Path) -> float:
    """The megabytes of the weight files a server loads from ``directory`` (every member of an ensemble)."""
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and "adapters" not in p.relative_to(directory).parts
    ]
    return sum(p.stat().st_size for p in files) / 1e6


def splits_of(run_dir: Path):
    """The member run's data splits (the test and validation splits every system is measured on)."""
    from omegaconf import OmegaConf

    from tessera.core.data import load_splits

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    return load_splits(cfg.data), cfg.data.max_length


class Classifier:
    """A transformers sequence classifier (float32, as tessera evaluates it)."""

    def __init__(self, directory: Path, tokenizer, max_length: int):
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]):
        import torch

        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(self.model(**batch).logits.float(), -1).numpy()


class OutputEnsemble:
    """An output-space ensemble export run in-process: each member, then the method's ``combine``."""

    def __init__(self, directory: Path, tokenizer, max_length: int):
        from tessera.core.plugins import discover

        description = json.loads((directory / "ensemble.json").read_text())
        cls = discover().registry.get("ensemble", description["method"]).cls
        self.ensembler = cls(cls.Config())
        self.ensembler.load_state(description["state"])
        self.weights = description["weights"]
        self.members = [Classifier(directory / m["path"], tokenizer, max_length) for m in description["members"]]

    def __call__(self, texts: list[str]):
        return self.ensembler.combine([member(texts) for member in self.members], self.weights)


def scores(classify, examples: list[dict]) -> dict:
    """Accuracy and macro-F1 of ``classify`` on ``examples``."""
    import numpy as np
    from sklearn.metrics import f1_score

    predictions = np.concatenate(
        [classify([e["text"] for e in examples[i : i + BATCH]]).argmax(-1) for i in range(0, len(examples), BATCH)]
    )
    labels = np.asarray([e["label"] for e in examples])
    return {
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
    }


def largest_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between two models' parameters of the same name."""
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)


def throughput(systems: dict, texts: list[str], rounds: int) -> dict[str, float]:
    """Sentences per second at batch 32 of each system: the median of ``rounds`` interleaved rounds."""
    samples = {name: [] for name in systems}
    for index in range(rounds):
        order = list(systems) if index % 2 == 0 else list(reversed(systems))
        for name in order:
            started = time.perf_counter()
            for i in range(0, len(texts), BATCH):
                systems[name](texts[i : i + BATCH])
            samples[name].append(len(texts) / (time.perf_counter() - started))
        log(f"  throughput round {index + 1}/{rounds} done")
    return {name: statistics.median(values) for name, values in samples.items()}


def mergekit_linear(python: str | None, members: list[Path], target: Path, threads: int) -> dict:
    """mergekit's ``linear`` merge of the members' exports into ``target`` (timed), or why it was not run."""
    if python is None:
        return {
            "skipped": "not run: mergekit is not a tessera dependency (LGPL-3.0-only, installs beside the pins per "
            "FACTS.md); pass --mergekit PATH/TO/python of a virtual environment that has it"
        }
    if (target / "config.json").is_file():
        return {"output": str(target), "seconds": json.loads((target / "bench-seconds.json").read_text())}
    config = target.parent / f"{target.name}.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "merge_method: linear\ndtype: float32\nmodels:\n"
        + "".join(f"  - model: {m / 'export'}\n    parameters:\n      weight: 1.0\n" for m in members)
    )
    started = time.perf_counter()
    result = subprocess.run(
        [python, "-m", "mergekit.scripts.run_yaml", str(config), str(target), "--copy-tokenizer"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["mergekit failed"])[-1]}
    (target / "bench-seconds.json").write_text(json.dumps(seconds))
    return {"output": str(target), "seconds": seconds}


def repetition(args, index: int, registered: list[str]) -> dict:
    """Train or reuse the three members of repetition ``index``, ensemble them every way, measure everything."""
    import numpy as np
    from transformers import AutoTokenizer

    seeds = [3 * index + 1, 3 * index + 2, 3 * index + 3]
    limits = [f"data.limit_train={args.limit_train}"] if args.limit_train else []
    limits += [f"data.limit_eval={args.limit_eval}"] if args.limit_eval else []
    suffix = "".join("-" + o.removeprefix("data.").replace("=", "") for o in limits)
    threads = [f"trainer.num_threads={args.threads}"]
    members = {
        f"member_seed{seed}": tessera(
            "train", args.work / f"member-seed{seed}{suffix}", [f"trainer.seed={seed}", *limits, *threads]
        )[0]
        for seed in seeds
    }
    group = args.work / f"ensembles-{'-'.join(map(str, seeds))}{suffix}"
    ensembles, refused = {}, {}
    for method in (m for m in METHODS if m in registered):
        run_dir, error = tessera("ensemble", group / method, [method, *map(str, members.values()), *threads])
        if error:
            refused[method] = error
        else:
            ensembles[method] = run_dir
    peer = mergekit_linear(args.mergekit, list(members.values()), group / "mergekit_linear", args.threads)
    splits, max_length = splits_of(next(iter(members.values())))
    tokenizer = AutoTokenizer.from_pretrained(next(iter(members.values())) / "export")
    systems, results = {}, {}
    for name, run_dir in {**members, **ensembles}.items():
        export = run_dir / "export"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        output_space = (export / "ensemble.json").is_file()
        systems[name] = (OutputEnsemble if output_space else Classifier)(export, tokenizer, max_length)
        results[name] = {
            "kind": "member" if name in members else ("output-space" if output_space else "weight-space"),
            "accuracy": metrics["test"]["accuracy"],
            "macro_f1": metrics["test"]["macro_f1"],
            "test_examples": metrics["test"]["examples"],
            "size_mb": served_megabytes(export),
        }
    if "output" in peer:
        systems["mergekit_linear"] = Classifier(Path(peer["output"]), tokenizer, max_length)
        results["mergekit_linear"] = {
            "kind": "peer (weight-space)",
            **scores(systems["mergekit_linear"], splits.test),
            "test_examples": len(splits.test),
            "size_mb": served_megabytes(Path(peer["output"])),
            "merge_seconds": peer["seconds"],
        }
        if "linear" in ensembles:
            results["mergekit_linear"]["largest_parameter_difference_vs_linear"] = largest_difference(
                Path(peer["output"]), ensembles["linear"] / "export"
            )
    for name in [*members, "greedy_soup"] if "greedy_soup" in systems else []:
        results[name]["validation_accuracy"] = scores(systems[name], splits.validation)["accuracy"]
    texts = [e["text"] for e in splits.test[: args.throughput_sentences]]
    for name, rate in throughput(systems, texts, args.rounds).items():
        results[name]["sentences_per_s_batch32"] = rate
    best = max(members, key=lambda m: results[m]["accuracy"])
    member_speed = statistics.median(results[m]["sentences_per_s_batch32"] for m in members)
    for result in results.values():
        result["vs_best_member"] = {
            "accuracy_points": 100 * (result["accuracy"] - results[best]["accuracy"]),
            "macro_f1_points": 100 * (result["macro_f1"] - results[best]["macro_f1"]),
            "size_ratio": result["size_mb"] / results[best]["size_mb"],
            "speed_ratio": result["sentences_per_s_batch32"] / results[best]["sentences_per_s_batch32"],
        }
    best_ensemble = max(ensembles, key=lambda m: results[m]["accuracy"]) if ensembles else None
    merged = [m for m in ensembles if results[m]["kind"] == "weight-space"]
    return {
        "member_seeds": seeds,
        "systems": results,
        "refused": refused,
        **({"mergekit": peer} if "output" not in peer else {}),
        "best_member": best,
        "best_ensemble": best_ensemble,
        "best_ensemble_gain_points": (
            100 * (results[best_ensemble]["accuracy"] - results[best]["accuracy"]) if best_ensemble else None
        ),
        "merged_speed_vs_member_median": (
            {m: results[m]["sentences_per_s_batch32"] / member_speed for m in merged} if merged else None
        ),
        "greedy_soup_validation_minus_best_member_points": (
            100
            * (results["greedy_soup"]["validation_accuracy"] - max(results[m]["validation_accuracy"] for m in members))
            if "greedy_soup" in results
            else None
        ),
        "member_accuracy_stdev_points": 100 * float(np.std([results[m]["accuracy"] for m in members])),
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tessera-bench-ensemble")
    parser.add_argument("--seeds", type=int, default=3, help="repetitions, each a different triple of member seeds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (the median is kept)")
    parser.add_argument("--throughput-sentences", type=int, default=512, help="test sentences timed per round")
    parser.add_argument("--limit-train", type=int, help="train the members on the first N sentences (a quick check)")
    parser.add_argument("--limit-eval", type=int, help="evaluate on the first N of each split (a quick check)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (train and measure)")
    parser.add_argument("--mergekit", help="a Python with mergekit installed: also time mergekit's linear merge")
    args = parser.parse_args()
    import torch

    from tessera.core.plugins import discover

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    registered = discover().registry.names("ensemble")
    repetitions = [repetition(args, index, registered) for index in range(args.seeds)]
    gains = [r["best_ensemble_gain_points"] for r in repetitions if r["best_ensemble_gain_points"] is not None]
    speeds = [
        max(r["merged_speed_vs_member_median"].values()) for r in repetitions if r["merged_speed_vs_member_median"]
    ]
    soups = [
        r["greedy_soup_validation_minus_best_member_points"]
        for r in repetitions
        if r["greedy_soup_validation_minus_best_member_points"] is not None
    ]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads",
        "seeds": args.seeds,
        "rounds": args.rounds,
        "throughput_sentences": args.throughput_sentences,
        "limit_train": args.limit_train,
        "limit_eval": args.limit_eval,
        "not_registered": {m: "not registered in this build: skipped" for m in METHODS if m not in registered},
        "repetitions": repetitions,
        "goals": {
            "best_ensemble_gain_points": spread(gains) if gains else None,
            "best_ensemble_at_least_1_point_above_best_member": bool(gains) and statistics.fmean(gains) >= 1.0,
            "merged_speed_vs_member_median": spread(speeds) if speeds else None,
            "a_merged_model_at_member_speed": bool(speeds) and min(speeds) >= 0.9,
            "greedy_soup_validation_minus_best_member_points": spread(soups) if soups else None,
            "greedy_soup_never_below_best_member_on_validation": (min(soups) >= 0.0) if soups else None,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
