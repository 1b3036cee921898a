"""Link prediction on Nations, UMLS and Kinships: tessera's TransE and RotatE (``torch_geometric.nn.kge``) vs
PyKEEN's ``pipeline`` with the same settings.

Both sides train on the packaged PyKEEN split files (PyKEEN through ``TriplesFactory.from_path`` on the same
files) with: embedding dimension ``--dim`` (complex dimension for RotatE, as in both libraries), ``--epochs``,
batch size ``--batch-size``, ``--negatives`` uniformly corrupted heads or tails per positive (PyKEEN's ``basic``
sampler), Adam at ``--lr``, a margin ranking loss with margin 1 (PyKEEN's default for both models), L1 distance for
TransE, one torch thread, seed 0. Both evaluate on the test split with filtered, realistic, both-sides ranks
(PyKEEN's ``RankBasedEvaluator`` filtering train, validation and test triples). Reported: MRR, Hits@10, MR and
training seconds (PyKEEN: ``PipelineResult.train_seconds``; tessera: the training loop), and the ratios.

PyKEEN at its best for these settings. A cProfile of one PyKEEN 1.11.1 run at its defaults (Nations, TransE,
100 epochs, one thread, 2026-12, other agents loading the 2 cores) took 98.5 s of ``train_seconds``, 87.6 s of
them (89 %) in ``gc.collect()``: PyKEEN's ``TrainingLoop._train_epoch`` ends every epoch with a full collection,
and a process that has imported torch, PyKEEN and tessera tracks about 410,000 objects, so each collection costs
0.3-0.9 s whatever the graph's size. This is the "20x slower" of earlier runs. The rest of the run was 702 batches
of about 3 ms each (forward 1.2 s, backward, Adam, PyKEEN's device checks per batch) and the
``automatic_memory_optimization`` probe (a sub-batch size search before training, about 0.7 s). So each run here:

* calls ``gc.collect(); gc.freeze()`` first (both libraries), which moves the already loaded objects out of the
  collector's reach: PyKEEN's per-epoch collection then scans only what the run allocated (same run under the
  profiler: 98.5 s -> 2.8 s of ``train_seconds``, the same MRR, 0.426);
* gives PyKEEN ``training_loop_kwargs=dict(automatic_memory_optimization=False)`` (batches of 256 on these
  graphs need no sub-batching; the probe also consumes random numbers, so the MRR moves a little with it),
  ``pin_memory=False`` (no accelerator: pinning only warns), ``evaluation_kwargs=dict(batch_size=256)`` (no
  batch-size search before evaluation) and one torch thread (with all of these: 2.1 s without the profiler).
  Measured on the same run and rejected: two threads (12.9 s instead of 2.1 s: thread thrash on this VM) and
  ``num_workers=1`` (21.7 s: a loader process per epoch).

The shared settings (batch size, negatives, epochs) are left equal on both sides: a bigger batch would shorten both
runs and change what is learnt. The pairs run alternately (tessera first on even pairs, PyKEEN first on odd ones),
one run each; PyKEEN's ``evaluate_seconds`` is reported beside its training time.
``--scale wordnet``: the same comparison on the WN18RR-style split of the packaged WordNet (``--source wn18rr``,
113,345 entities, 159,783 / 5,000 / 5,000 triples; ``wn18rr:mirrored`` keeps both directions of symmetric facts, as
WN18RR's files do), for each of ``--models``, in three phases:

1. PyKEEN trains for as many epochs as fit in ``--pykeen-minutes`` (20; one epoch timed on ``--probe-share`` of
   the training triples decides, unless ``--epochs`` is given), with its sLCWA training loop;
2. tessera trains for the same number of epochs with the same settings (RotatE's self-adversarial loss ``nssa``
   with margin ``--margin`` and temperature ``--adversarial-temperature`` on both sides, ``--negatives`` uniform
   negatives, Adam at ``--lr``, ``--batch-size``, ``--dim``);
3. tessera trains to convergence with ``--converge-negatives`` (256; ``--max-epochs 0`` skips this phase): up to ``--max-epochs``, validated every
   ``--evaluate-every`` epochs on ``--validation-triples`` (1,000) of the valid split, stopped after ``--patience``
   validations without a better MRR, tested with the best state.

Both libraries' models are tested by tessera's evaluator (PyKEEN's trained tables put in a tessera model of the
same scoring function): PyKEEN's own ``RankBasedEvaluator`` took 70 s per 200 test triples for TransE and 263 s
for RotatE on one thread (29 and 110 minutes for the 5,000); ``--tiny`` runs it beside and reports both (they
agree). ``--pykeen-from JSON`` takes PyKEEN's results and epochs from an earlier run's JSON and runs tessera's
side alone (e.g. again with ``--sampling triple``, PyKEEN's own sampler).

Each phase reports seconds and peak resident memory (``VmHWM`` of ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before the phase); the JSON compares tessera's MRR and time with PyKEEN's at equal epochs
(goal: MRR at least PyKEEN's at no more than a quarter of its training time) and RotatE at convergence with the
RotatE paper's WN18RR MRR, 0.476 (goal: within 10 %). ``--tiny`` runs every phase on the first 2,000 training
triples and 50 test triples for a minute-long check of the script.

Needs PyKEEN 1.11.1 (the ``bench`` extra), e.g. in a separate environment: ``python3 -m venv /work/pykeen-venv &&
/work/pykeen-venv/bin/pip install torch==2.13.0 pykeen==1.11.1 torch-geometric==2.8.1 networkx==3.6.1
rdflib==7.6.0 pluggy==1.7.0 hydra-core==1.3.8``, then ``PYTHONPATH=. /work/pykeen-venv/bin/python bench/kge.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASETS = ("nations", "umls", "kinships")
MODELS = {"transe": "TransE", "rotate": "RotatE"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_tessera(dataset: str, model: str, args) -> dict:
    from tessera.core.plugins import discover
    from tessera.graphs.embeddings import KGEConfig, train_embeddings
    from tessera.graphs.loaders import load_graph

    config = KGEConfig(
        model=model,
        dim=args.dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        negatives=args.negatives,
        loss="margin",
        margin=1.0,
        seed=0,
        threads=1,
    )
    trained = train_embeddings(load_graph(f"pykeen:{dataset}", discover()), config)
    both = trained.metrics["both"]
    return {
        "mrr": round(both["mrr"], 4),
        "hits_at_10": round(both["hits_at_10"], 4),
        "mr": round(both["mr"], 3),
        "train_seconds": round(trained.seconds, 2),
    }


def run_pykeen(dataset: str, model: str, args) -> dict:
    import torch
    from pykeen.pipeline import pipeline
    from pykeen.triples import TriplesFactory

    from tessera.core.assets import asset_path

    directory = asset_path("pykeen") / dataset
    training = TriplesFactory.from_path(directory / "train.txt")
    splits = {
        split: TriplesFactory.from_path(
            directory / f"{split}.txt", entity_to_id=training.entity_to_id, relation_to_id=training.relation_to_id
        )
        for split in ("valid", "test")
    }
    torch.set_num_threads(1)
    result = pipeline(
        training=training,
        validation=splits["valid"],
        testing=splits["test"],
        model=MODELS[model],
        model_kwargs=dict(embedding_dim=args.dim),
        optimizer="Adam",
        optimizer_kwargs=dict(lr=args.lr),
        loss="marginranking",
        loss_kwargs=dict(margin=1.0),
        negative_sampler="basic",
        negative_sampler_kwargs=dict(num_negs_per_pos=args.negatives),
        training_loop_kwargs=dict(automatic_memory_optimization=False),
        training_kwargs=dict(num_epochs=args.epochs, batch_size=args.batch_size, pin_memory=False),
        evaluation_kwargs=dict(batch_size=256),
        random_seed=0,
        device="cpu",
        use_tqdm=False,
    )
    return pykeen_metrics(result, mr_digits=3)


def pykeen_metrics(result, mr_digits: int) -> dict:
    """The realistic filtered MRR, hits@10 and mean rank of a PyKEEN pipeline result, and its seconds."""
    metric = result.metric_results.get_metric
    return {
        "mrr": round(metric("both.realistic.inverse_harmonic_mean_rank"), 4),
        "hits_at_10": round(metric("both.realistic.hits_at_10"), 4),
        "mr": round(metric("both.realistic.arithmetic_mean_rank"), mr_digits),
        "train_seconds": round(result.train_seconds, 2),
        "evaluate_seconds": round(result.evaluate_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("small", "wordnet"), default="small")
    parser.add_argument("--dim", type=int, help="embedding dimension (small: 64, wordnet: 128)")
    parser.add_argument("--epochs", type=int, help="small: 100; wordnet: the epochs of phases 1 and 2 (default: probe)")
    parser.add_argument("--batch-size", type=int, help="small: 256, wordnet: 512")
    parser.add_argument("--negatives", type=int, help="small: 1, wordnet: 64")
    parser.add_argument("--lr", type=float, help="small: 0.01, wordnet: 0.01")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--source", default="wn18rr:mirrored", help="wordnet scale: the graph source (wn18rr:mirrored, wn18rr)"
    )
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="wordnet scale: transe, rotate")
    parser.add_argument("--margin", type=float, default=6.0, help="wordnet scale: the nssa loss's gamma")
    parser.add_argument("--adversarial-temperature", type=float, default=0.5, help="wordnet scale: nssa's alpha")
    parser.add_argument("--pykeen-minutes", type=float, default=20.0, help="wordnet scale: PyKEEN's training time")
    parser.add_argument("--max-epochs", type=int, default=60, help="wordnet scale: tessera to convergence")
    parser.add_argument(
        "--converge-negatives", type=int, default=256, help="wordnet scale: negatives of tessera's convergence run"
    )
    parser.add_argument(
        "--validation-triples", type=int, default=1000, help="wordnet scale: valid triples the convergence run checks"
    )
    parser.add_argument(
        "--pykeen-from",
        metavar="JSON",
        help="wordnet scale: PyKEEN's results and epochs from an earlier run's JSON (tessera's side alone is run)",
    )
    parser.add_argument(
        "--probe-share", type=float, default=0.1, help="wordnet scale: the share of an epoch PyKEEN's probe trains"
    )
    parser.add_argument("--evaluate-every", type=int, default=3)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument(
        "--sampling", default="auto", help="wordnet scale: tessera's negative sampling (auto: shared on WordNet)"
    )
    parser.add_argument("--tiny", action="store_true", help="wordnet scale: 2,000 train / 50 test triples")
    args = parser.parse_args()
    defaults = dict(small=(64, 100, 256, 1, 0.01), wordnet=(128, None, 512, 64, 0.01))[args.scale]
    for name, value in zip(("dim", "epochs", "batch_size", "negatives", "lr"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        import pykeen  # noqa: F401
    except ImportError:
        sys.exit("bench/kge.py needs PyKEEN: pip install 'pykeen==1.11.1' (the bench extra)")
    import logging

    logging.getLogger("pykeen").setLevel(logging.ERROR)
    if args.scale == "wordnet":
        from kge_wordnet import run_wordnet

        print(json.dumps(run_wordnet(args), indent=2))
        return
    main_small(args)


def main_small(args) -> None:
    import pykeen

    pairs, index = [], 0
    for dataset in args.datasets:
        for model in MODELS:
            runners = [("tessera", run_tessera), ("pykeen", run_pykeen)]
            outcome = {}
            for name, runner in runners if index % 2 == 0 else runners[::-1]:
                gc.collect()
                gc.freeze()
                started = time.perf_counter()
                outcome[name] = runner(dataset, model, args)
                log(f"{dataset} {model} {name}: {outcome[name]} ({time.perf_counter() - started:.0f} s wall)")
            index += 1
            pairs.append(
                {
                    "dataset": dataset,
                    "model": model,
                    **outcome,
                    "mrr_ratio": round(outcome["tessera"]["mrr"] / outcome["pykeen"]["mrr"], 3),
                    "time_ratio": round(outcome["tessera"]["train_seconds"] / outcome["pykeen"]["train_seconds"], 3),
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "kge",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, 1 torch thread",
                "settings": {
                    "dim": args.dim,
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "negatives": args.negatives,
                    "lr": args.lr,
                    "loss": "margin ranking, margin 1",
                    "optimizer": "Adam",
                    "pykeen": pykeen.get_version(),
                    "pykeen_tuning": "gc.freeze() before each run, automatic_memory_optimization=False, "
                    "pin_memory=False, evaluation batch 256, 1 torch thread",
                },
                "pairs": pairs,
                "tessera_mrr_at_least_pykeen": all(p["mrr_ratio"] >= 1 for p in pairs),
                "tessera_time_at_most_pykeen": all(p["time_ratio"] <= 1 for p in pairs),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
