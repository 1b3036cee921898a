"""Federated training side by side: centralised training against tessera's federations of the movie-review
classifier (the main job's composition: MiniLM + LoRA on the movie-review sentences), in one run.

Every system is a ``tessera train`` run (reused from ``--work`` when complete) measured by tessera on the same test
split (accuracy and macro-F1 from its ``metrics.json``):

- **IID**: centralised training (``trainer.epochs=E``) against ``fedavg`` with ``--clients`` IID clients at the
  same total number of local epochs (``federated.rounds=E federated.local_epochs=1``). Goal: within 2 points.
- **non-IID**: Dirichlet(``--alpha``) partitions for ``fedavg``, ``fedprox`` and ``fedadam`` (reported).
- **attack**: ``--attackers`` of the clients sign-flipping their updates, against ``fedavg``, ``krum``,
  ``trimmed_mean``, ``median`` and ``fltrust``. Goal: the robust ones within 2 points of the attack-free
  ``fedavg`` while ``fedavg`` drops. ``trimmed_mean`` trims the attackers' share at each end (``beta``; its
  default 0.2 is reported beside it as ``trimmed_mean_default_beta``).
- **privacy**: DP-FedAvg (server-side fixed clipping) at a target epsilon of about 8 and about 2 (delta 1e-5):
  accuracy and the accountant's epsilon (reported).
- **round time**: tessera's in-process engine against Flower's own simulation engine (ray,
  ``bench/flower_simulation.py``: ``flwr.simulation.run_simulation`` on tessera's ServerApp and ClientApp, the
  ones ``tessera federate`` deploys; ray comes with ``flwr[simulation]``, the ``bench`` extra; without it the JSON
  says why it was not run), ``--ray-cpus`` ClientApp actors of one CPU each. Two workloads: the IID federation
  above (``fedavg_iid``: local training dominates a round) and the engine's own cost (``engine``: the tiny
  random-weight model, one local step per client, ``--clients`` clients, 5 rounds). Reported per workload: the
  first round (ray's actors build their clients' models in it; in process the clients share the stage's model,
  built before round 1), the median of the later rounds, and the run's seconds. Goal: at least 5x faster.

A system whose technique is not registered (or that tessera refuses) is reported with its one-line reason.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/federated.py --threads 1 --ray-cpus 1           # the whole comparison
    HF_HUB_OFFLINE=1 .venv/bin/python bench/federated.py --limit-train 400 --limit-eval 200 --epochs 1   # a check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble import run_or_reuse, tessera  # noqa: E402  (the same run-or-reuse runner)

ROBUST = ("krum", "trimmed_mean", "median", "fltrust")
#: The round-time workload where the engine's own cost dominates: one local step of the tiny model per client.
ENGINE = [
    "experiment=smoke",
    "aggregator=fedavg",
    "federated.rounds=5",
    "federated.local_steps=1",
    "data.limit_eval=32",
]


def systems(args) -> dict[str, list[str]]:
    """``{name: overrides}`` of every system of the comparison."""
    federation = [
        f"federated.clients={args.clients}",
        f"federated.rounds={args.epochs}",
        "federated.local_epochs=1",
    ]
    dirichlet = ["federated.partition=dirichlet", f"federated.alpha={args.alpha}"]
    attack = ["federated.attack=sign_flip", f"federated.attackers={args.attackers}"]
    found = {"centralised": [f"trainer.epochs={args.epochs}"], "fedavg_iid": ["aggregator=fedavg", *federation]}
    for name in ("fedavg", "fedprox", "fedadam"):
        found[f"{name}_dirichlet"] = [f"aggregator={name}", *federation, *dirichlet]
    for name in ("fedavg", *ROBUST):
        found[f"{name}_sign_flip"] = [f"aggregator={name}", *federation, *attack]
    # Trimmed mean drops int(beta * n) values at each end: it needs beta at least the attackers' share (its
    # default 0.2 trims one of 8 clients at each end, and 2 attack); the default is reported beside it.
    found["trimmed_mean_default_beta_sign_flip"] = found["trimmed_mean_sign_flip"]
    share = math.floor(args.attackers * args.clients + 0.5) / args.clients
    found["trimmed_mean_sign_flip"] = [*found["trimmed_mean_sign_flip"], f"aggregator.trimmed_mean.beta={share:g}"]
    for epsilon in args.epsilons:
        privacy = ["federated.privacy.dp=server_fixed", f"federated.privacy.target_epsilon={epsilon}"]
        found[f"dp_fedavg_epsilon{epsilon:g}"] = [
            "aggregator=fedavg",
            *federation,
            *privacy,
            "federated.privacy.delta=1e-5",
        ]
    return found


def measured(run_dir: Path) -> dict:
    """A run's test accuracy and macro-F1 and, for a federation, its rounds and privacy."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = {k: metrics["test"][k] for k in ("accuracy", "macro_f1")}
    federated = metrics.get("federated")
    if federated:
        rounds = federated["rounds"]
        found["validation_accuracy_per_round"] = [r["validation"].get("accuracy") for r in rounds]
        found["round_seconds_median"] = statistics.median(r["seconds"] for r in rounds)
        found["megabytes_per_round"] = (rounds[0]["bytes_sent"] + rounds[0]["bytes_received"]) / 1e6
        for key in ("attackers", "privacy"):
            if key in federated:
                found[key] = federated[key]
    found["seconds"] = metrics["seconds"]["total"]
    return found


def round_times(run_dir: Path) -> dict:
    """A federated run's first round, the median of its later rounds, and its total seconds."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = [r["seconds"] for r in metrics["federated"]["rounds"]]
    return {
        "first_round_seconds": round(seconds[0], 3),
        "later_rounds_median_seconds": round(statistics.median(seconds[1:] or seconds), 3),
        "run_seconds": round(metrics["seconds"]["total"], 1),
    }


def flower_simulation(run_dir: Path, cpus: int, overrides: list[str]) -> tuple[Path, str | None]:
    """Flower's simulation engine (ray) on tessera's apps, run or reused like a tessera run."""
    command = [sys.executable, str(Path(__file__).with_name("flower_simulation.py")), str(run_dir), str(cpus)]
    return run_or_reuse(run_dir, [*command, *overrides], f"flower simulation (ray, {cpus} CPUs) {' '.join(overrides)}")


def round_time(args, common: list[str], suffix: str, federations: dict[str, list[str]]) -> dict:
    """tessera's in-process engine against Flower's simulation engine on each workload of ``federations``."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return {"not_run": "ray is not installed: pip install 'flwr[simulation]==1.32.1' (the bench extra)"}
    threads = [f"trainer.num_threads={max(1, args.threads // args.ray_cpus)}"]
    found = {}
    for name, overrides in federations.items():
        in_process, error = tessera("train", args.work / f"{name}{suffix}", [*overrides, *common])
        simulated, refused = flower_simulation(
            args.work / f"ray_{name}{suffix}", args.ray_cpus, [*overrides, *common[1:], *threads]
        )
        if error or refused:
            found[name] = {"refused": error or refused}
            continue
        tessera_times, ray_times = round_times(in_process), round_times(simulated)
        found[name] = {
            "tessera_in_process": tessera_times,
            "flower_simulation_ray": ray_times,
            "ray_over_tessera": {
                key: round(ray_times[key] / tessera_times[key], 2)
                for key in ("first_round_seconds", "later_rounds_median_seconds", "run_seconds")
            },
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tessera-bench-federated")
    parser.add_argument("--epochs", type=int, default=3, help="centralised epochs = federated rounds of 1 epoch")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of the non-IID systems")
    parser.add_argument("--attackers", type=float, default=0.2, help="fraction of sign-flipping clients")
    parser.add_argument("--epsilons", type=float, nargs="*", default=[8.0, 2.0], help="DP-FedAvg targets")
    parser.add_argument("--limit-train", type=int, help="train on the first N sentences (a quick check)")
    parser.add_argument("--limit-eval", type=int, help="evaluate on the first N of each split (a quick check)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs of Flower's ray simulation (1 actor each)")
    parser.add_argument(
        "--round-time",
        nargs="*",
        default=["fedavg_iid", "engine"],
        choices=["fedavg_iid", "engine"],
        help="the round-time workloads",
    )
    parser.add_argument("--only", nargs="*", help="run only these systems (and round_time)")
    args = parser.parse_args()

    common = [f"trainer.num_threads={args.threads}"]
    common += [f"data.limit_train={args.limit_train}"] if args.limit_train else []
    common += [f"data.limit_eval={args.limit_eval}"] if args.limit_eval else []
    suffix = "".join("-" + o.split(".")[-1].replace("=", "") for o in common[1:])
    results, refused = {}, {}
    for name, overrides in systems(args).items():
        if args.only and name not in args.only:
            continue
        run_dir, error = tessera("train", args.work / f"{name}{suffix}", [*overrides, *common])
        if error:
            refused[name] = error
        else:
            results[name] = measured(run_dir)

    workloads = {"fedavg_iid": systems(args)["fedavg_iid"], "engine": [*ENGINE, f"federated.clients={args.clients}"]}
    chosen = {name: workloads[name] for name in args.round_time}
    timed = {} if args.only and "round_time" not in args.only else round_time(args, common, suffix, chosen)

    def accuracy(name):
        return results[name]["accuracy"] if name in results else None

    def points(a, b):
        return None if accuracy(a) is None or accuracy(b) is None else round(100 * (accuracy(a) - accuracy(b)), 2)

    iid_gap = points("fedavg_iid", "centralised")
    attacked = {name: points(f"{name}_sign_flip", "fedavg_iid") for name in ("fedavg", *ROBUST)}
    robust = [v for k, v in attacked.items() if k != "fedavg" and v is not None]
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "only")},
        "systems": results,
        "refused": refused,
        "round_time": timed,
        "goals": {
            "fedavg_iid_minus_centralised_points": iid_gap,
            "fedavg_iid_within_2_points": None if iid_gap is None else iid_gap >= -2,
            "sign_flip_minus_attack_free_points": attacked,
            "robust_within_2_points_of_attack_free": bool(robust) and min(robust) >= -2,
            "fedavg_drops_under_attack": None if attacked["fedavg"] is None else attacked["fedavg"] < -2,
            "later_rounds_ray_over_tessera": {
                k: w["ray_over_tessera"]["later_rounds_median_seconds"]
                for k, w in timed.items()
                if "ray_over_tessera" in w
            },
            "round_time_at_least_5x_faster": {
                k: w["ray_over_tessera"]["later_rounds_median_seconds"] >= 5
                for k, w in timed.items()
                if "ray_over_tessera" in w
            },
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
