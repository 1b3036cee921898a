"""``bench/kge.py --scale wordnet``: tessera vs PyKEEN on the WN18RR-style split of WordNet (see bench/kge.py's
docstring for the phases), with seconds and peak memory per phase."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

PAPER_MRR = 0.476  # RotatE on WN18RR, Sun et al. 2019
MODELS = {"transe": "TransE", "rotate": "RotatE"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Phase:
    """Seconds and peak resident memory of a block: ``with Phase("name", report): ...``."""

    def __init__(self, name: str, report: dict):
        self.name, self.report = name, report

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident set
        except OSError:
            pass
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.started
        self.report[self.name] = {"seconds": round(seconds, 2), "peak_rss_mb": _peak_rss_mb()}
        log(f"{self.name}: {self.report[self.name]}")
        return False


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _graph(args):
    """The benchmark graph; with ``--tiny``, its first 2,000 training triples and up to 50 validation and test
    triples over their entities (re-indexed, so both libraries rank against the same entities)."""
    from tessera.core.plugins import discover
    from tessera.graphs.loaders import load_graph
    from tessera.graphs.loaders.tsv import graph_from_splits

    graph = load_graph(args.source, discover())
    if not args.tiny:
        return graph

    def keys(rows):
        return [(graph.entities[h], graph.relations[r], graph.entities[t]) for h, r, t in rows.tolist()]

    train = keys(graph.split("train")[:2000])
    seen = {key for h, _, t in train for key in (h, t)}
    relations = {r for _, r, _ in train}
    parts = {"train": train}
    for split in ("valid", "test"):
        parts[split] = [row for row in keys(graph.split(split)) if {row[0], row[2]} <= seen and row[1] in relations][
            :50
        ]
    return graph_from_splits(f"{graph.name}-tiny", parts)


def _config(model: str, args, epochs: int, converge: bool):
    from tessera.graphs.embeddings import KGEConfig

    return KGEConfig(
        model=model,
        dim=args.dim,
        epochs=epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        negatives=args.negatives,
        sampling=args.sampling,
        loss="nssa",
        margin=args.margin,
        adversarial_temperature=args.adversarial_temperature,
        evaluate_every=args.evaluate_every if converge else 0,
        patience=args.patience if converge else 0,
        threads=1,
    )


def _summary(metrics: dict) -> dict:
    both = metrics["both"]
    return {"mrr": round(both["mrr"], 4), "hits_at_10": round(both["hits_at_10"], 4), "mr": round(both["mr"], 1)}


def run_tessera(graph, model: str, args, epochs: int, converge: bool, phases: dict, prefix: str) -> dict:
    from tessera.graphs.embeddings import train_embeddings

    with Phase(f"{prefix}_train", phases):
        trained = train_embeddings(graph, _config(model, args, epochs, converge), evaluate=None)
    with Phase(f"{prefix}_test", phases):
        metrics = _test(graph, trained)
    result = {**_summary(metrics), "train_seconds": round(trained.seconds, 2), "test_seconds": metrics["seconds"]}
    if converge:
        validation = trained.metrics["validation"]
        result.update(
            epochs_trained=validation["epochs_trained"],
            best_epoch=validation["best_epoch"],
            best_valid_mrr=round(validation["best_mrr"], 4),
            validation_seconds=validation["seconds"],
        )
    return result


def _test(graph, trained) -> dict:
    """Test metrics of saved embeddings (a fresh model holding them, then tessera's evaluator)."""
    import torch

    from tessera.graphs.embeddings import _Scorer, link_prediction

    scorer = _Scorer(graph, graph.split("train"), trained.config)
    entities = torch.as_tensor(trained.entities)
    with torch.no_grad():
        for table, part in zip(scorer.entity_tables, entities.chunk(len(scorer.entity_tables), dim=-1)):
            getattr(scorer.model, table).weight.copy_(part)
        scorer.model.rel_emb.weight.copy_(torch.as_tensor(trained.relations))
    return link_prediction(scorer, graph, "test")


def _pykeen_factories(graph, directory: Path):
    from pykeen.triples import TriplesFactory

    for split in ("train", "valid", "test"):
        rows = graph.split(split)
        lines = (f"{graph.entities[h]}\t{graph.relations[r]}\t{graph.entities[t]}\n" for h, r, t in rows.tolist())
        (directory / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    training = TriplesFactory.from_path(directory / "train.txt")
    others = {
        split: TriplesFactory.from_path(
            directory / f"{split}.txt", entity_to_id=training.entity_to_id, relation_to_id=training.relation_to_id
        )
        for split in ("valid", "test")
    }
    return training, others["valid"], others["test"]


def run_pykeen(factories, model: str, args, epochs: int) -> dict:
    import torch
    from pykeen.pipeline import pipeline

    training, validation, testing = factories
    torch.set_num_threads(1)
    result = pipeline(
        training=training,
        validation=validation,
        testing=testing,
        model=MODELS[model],
        model_kwargs=dict(embedding_dim=args.dim),
        optimizer="Adam",
        optimizer_kwargs=dict(lr=args.lr),
        loss="nssa",
        loss_kwargs=dict(margin=args.margin, adversarial_temperature=args.adversarial_temperature),
        negative_sampler="basic",
        negative_sampler_kwargs=dict(num_negs_per_pos=args.negatives),
        training_loop_kwargs=dict(automatic_memory_optimization=False),
        training_kwargs=dict(num_epochs=epochs, batch_size=args.batch_size, pin_memory=False),
        evaluator_kwargs=dict(filtered=True),
        evaluation_kwargs=dict(batch_size=64),
        random_seed=0,
        device="cpu",
        use_tqdm=False,
    )
    from kge import pykeen_metrics  # bench/kge.py, which runs this module

    return pykeen_metrics(result, mr_digits=1)


def _pykeen_epoch_seconds(factories, model: str, args) -> float:
    """Seconds of one PyKEEN training epoch with the benchmark's settings (the probe that sizes phase 1)."""
    import torch
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop

    training = factories[0]
    torch.set_num_threads(1)
    kge = model_resolver.make(
        MODELS[model],
        embedding_dim=args.dim,
        triples_factory=training,
        random_seed=0,
        loss="nssa",
        loss_kwargs=dict(margin=args.margin, adversarial_temperature=args.adversarial_temperature),
    )
    loop = SLCWATrainingLoop(
        model=kge,
        triples_factory=training,
        optimizer=torch.optim.Adam(kge.get_grad_params(), lr=args.lr),
        negative_sampler="basic",
        negative_sampler_kwargs=dict(num_negs_per_pos=args.negatives),
        automatic_memory_optimization=False,
    )
    started = time.perf_counter()
    loop.train(training, num_epochs=1, batch_size=args.batch_size, use_tqdm=False, pin_memory=False)
    return time.perf_counter() - started


def run_wordnet(args) -> dict:
    import gc

    import pykeen

    phases: dict = {}
    with Phase("load_graph", phases):
        graph = _graph(args)
    log(f"{graph!r}: " + ", ".join(f"{k} {len(v):,}" for k, v in graph.splits.items()))
    results = []
    with tempfile.TemporaryDirectory() as directory:
        factories = _pykeen_factories(graph, Path(directory))
        for model in args.models:
            epochs = args.epochs
            if epochs is None:
                gc.collect()
                gc.freeze()
                with Phase(f"{model}_pykeen_probe", phases):
                    epoch_seconds = _pykeen_epoch_seconds(factories, model, args)
                epochs = max(1, int(args.pykeen_minutes * 60 // epoch_seconds))
                log(
                    f"{model}: PyKEEN takes {epoch_seconds:.1f} s an epoch: {epochs} epochs in {args.pykeen_minutes} min"
                )
            gc.collect()
            gc.freeze()
            with Phase(f"{model}_pykeen", phases):
                pykeen_result = run_pykeen(factories, model, args, epochs)
            log(f"{model} pykeen, {epochs} epochs: {pykeen_result}")
            gc.collect()
            gc.freeze()
            equal = run_tessera(graph, model, args, epochs, False, phases, f"{model}_tessera_equal_epochs")
            log(f"{model} tessera, {epochs} epochs: {equal}")
            converged = run_tessera(graph, model, args, args.max_epochs, True, phases, f"{model}_tessera_converged")
            log(f"{model} tessera to convergence: {converged}")
            entry = {
                "model": model,
                "epochs": epochs,
                "pykeen": pykeen_result,
                "tessera": equal,
                "tessera_converged": converged,
                "mrr_ratio": round(equal["mrr"] / pykeen_result["mrr"], 3) if pykeen_result["mrr"] else None,
                "time_ratio": round(equal["train_seconds"] / pykeen_result["train_seconds"], 3),
            }
            if model == "rotate":
                entry["paper_mrr"] = PAPER_MRR
                entry["converged_vs_paper"] = round(converged["mrr"] / PAPER_MRR, 3)
            results.append(entry)
    return {
        "benchmark": "kge_wordnet",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, 1 torch thread",
        "graph": {
            "source": args.source,
            "tiny": args.tiny,
            "entities": graph.num_entities,
            "relations": graph.num_relations,
            **{split: int(len(indices)) for split, indices in graph.splits.items()},
        },
        "settings": {
            "dim": args.dim,
            "batch_size": args.batch_size,
            "negatives": args.negatives,
            "sampling": f"PyKEEN: basic (each positive its own); tessera: {args.sampling}",
            "lr": args.lr,
            "loss": f"nssa (self-adversarial), margin {args.margin}, temperature {args.adversarial_temperature}",
            "optimizer": "Adam (tessera: SparseAdam on this graph)",
            "convergence": f"up to {args.max_epochs} epochs, validated every {args.evaluate_every}, "
            f"patience {args.patience}",
            "pykeen": pykeen.get_version(),
        },
        "results": results,
        "phases": phases,
        "goals": {
            "mrr_at_least_pykeen_at_equal_epochs": all((r["mrr_ratio"] or 0) >= 1 for r in results),
            "time_at_most_a_quarter_of_pykeen": all(r["time_ratio"] <= 0.25 for r in results),
            "rotate_converged_within_10_percent_of_paper": all(
                r["converged_vs_paper"] >= 0.9 for r in results if "converged_vs_paper" in r
            ),
        },
    }
