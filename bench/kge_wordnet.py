"""``bench/kge.py --scale wordnet``: tessera vs PyKEEN on the WN18RR-style split of WordNet (see bench/kge.py's
docstring for the phases), with seconds and peak memory per phase."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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
        negatives=args.converge_negatives if converge else args.negatives,
        sampling=args.sampling,
        loss="nssa",
        margin=args.margin,
        adversarial_temperature=args.adversarial_temperature,
        evaluate_every=args.evaluate_every if converge else 0,
        patience=args.patience if converge else 0,
        validation_split=VALIDATION_SAMPLE if converge else "valid",
        threads=1,
    )


#: The split that tessera's convergence run validates on: ``--validation-triples`` of the valid split.
VALIDATION_SAMPLE = "valid_sample"


def _summary(metrics: dict) -> dict:
    both = metrics["both"]
    return {"mrr": round(both["mrr"], 4), "hits_at_10": round(both["hits_at_10"], 4), "mr": round(both["mr"], 1)}


def run_tessera(graph, model: str, args, epochs: int, converge: bool, phases: dict, prefix: str) -> dict:
    from tessera.graphs.embeddings import train_embeddings

    with Phase(f"{prefix}_train", phases):
        trained = train_embeddings(graph, _config(model, args, epochs, converge), evaluate=None, log=log)
    with Phase(f"{prefix}_test", phases):
        metrics = _test(graph, trained.config, trained.entities, trained.relations)
    validation = trained.metrics.get("validation", {})
    trained_epochs = validation.get("epochs_trained", epochs)
    result = {
        **_summary(metrics),
        "epochs": trained_epochs,
        "negatives": trained.config.negatives,
        "train_seconds": round(trained.seconds, 2),
        "seconds_per_epoch": round(trained.seconds / trained_epochs, 2),
        "test_seconds": metrics["seconds"],
    }
    if converge:
        result.update(
            best_epoch=validation["best_epoch"],
            best_valid_mrr=round(validation["best_mrr"], 4),
            validation_seconds=validation["seconds"],
            validation_history=validation["history"],
        )
    return result


def _test(graph, config, entities, relations) -> dict:
    """Test metrics of embeddings (a fresh tessera model holding them, then tessera's evaluator)."""
    import torch

    from tessera.graphs.embeddings import _Scorer, link_prediction

    scorer = _Scorer(graph, graph.split("train"), config)
    entities = torch.as_tensor(entities)
    with torch.no_grad():
        for table, part in zip(scorer.entity_tables, entities.chunk(len(scorer.entity_tables), dim=-1)):
            getattr(scorer.model, table).weight.copy_(part)
        scorer.model.rel_emb.weight.copy_(torch.as_tensor(relations))
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


def _pykeen_loop(training, model: str, args):
    """A PyKEEN model and its sLCWA training loop with the benchmark's settings (seed 0, one thread)."""
    import torch
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop

    torch.set_num_threads(1)
    torch.manual_seed(0)
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
    return kge, loop


def run_pykeen(graph, factories, model: str, args, epochs: int, phases: dict) -> dict:
    """PyKEEN's sLCWA training loop for ``epochs``, then its model's test metrics from tessera's evaluator (the
    same filtered realistic ranks; PyKEEN's own ``RankBasedEvaluator`` is run beside it with ``--tiny``, where the
    two agree, and is too slow at this scale on one thread: 70 s per 200 test triples for TransE, 263 s for
    RotatE, so 29 and 110 minutes for the 5,000)."""
    training, validation, testing = factories
    kge, loop = _pykeen_loop(training, model, args)
    with Phase(f"{model}_pykeen_train", phases):
        started = time.perf_counter()
        loop.train(training, num_epochs=epochs, batch_size=args.batch_size, use_tqdm=False, pin_memory=False)
        seconds = time.perf_counter() - started
    with Phase(f"{model}_pykeen_test", phases):
        entities, relations = _pykeen_embeddings(graph, kge, model, training)
        metrics = _test(graph, _config(model, args, epochs, False), entities, relations)
    result = {
        **_summary(metrics),
        "epochs": epochs,
        "negatives": args.negatives,
        "train_seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / epochs, 2),
        "test_seconds": metrics["seconds"],
        "evaluator": "tessera's, on PyKEEN's trained embeddings",
    }
    if args.tiny:
        from pykeen.evaluation import RankBasedEvaluator

        evaluated = RankBasedEvaluator(filtered=True).evaluate(
            kge,
            testing.mapped_triples,
            batch_size=64,
            additional_filter_triples=[training.mapped_triples, validation.mapped_triples],
            use_tqdm=False,
        )
        metric = evaluated.get_metric
        result["pykeen_evaluator"] = {
            "mrr": round(metric("both.realistic.inverse_harmonic_mean_rank"), 4),
            "hits_at_10": round(metric("both.realistic.hits_at_10"), 4),
            "mr": round(metric("both.realistic.arithmetic_mean_rank"), 1),
        }
    return result


def _pykeen_embeddings(graph, kge, model: str, training):
    """PyKEEN's trained entity and relation tables in tessera's layout and entity order: TransE's as they are
    (PyKEEN keeps entities at unit L2 norm and scores ``-|h + r - t|_1``, as tessera); RotatE's complex entities as
    real then imaginary halves and its unit-modulus relations as phases (both score ``-|h * r - t|_2``; tessera's
    margin shifts every score alike)."""
    import torch

    entity_ids = torch.as_tensor([training.entity_to_id[label] for label in graph.entities])
    relation_ids = torch.as_tensor([training.relation_to_id[label] for label in graph.relations])
    with torch.no_grad():
        entities = kge.entity_representations[0](indices=None).detach()[entity_ids]
        relations = kge.relation_representations[0](indices=None).detach()[relation_ids]
    if model == "rotate":
        entities = torch.cat([entities.real, entities.imag], dim=-1)
        relations = torch.angle(relations)
    return entities.float().numpy(), relations.float().numpy()


def _pykeen_epoch_seconds(factories, model: str, args) -> float:
    """Seconds of one PyKEEN training epoch with the benchmark's settings (the probe that sizes phase 1): one epoch
    over the first ``--probe-share`` of the training triples (the same entities, so each batch costs what it costs in
    the full epoch, Adam's update of the whole tables included), scaled to all of them."""
    from pykeen.triples import TriplesFactory

    full = factories[0]
    count = max(args.batch_size, int(full.num_triples * args.probe_share))
    training = TriplesFactory(
        full.mapped_triples[:count],
        entity_to_id=full.entity_to_id,
        relation_to_id=full.relation_to_id,
        create_inverse_triples=False,
    )
    _, loop = _pykeen_loop(training, model, args)
    started = time.perf_counter()
    loop.train(training, num_epochs=1, batch_size=args.batch_size, use_tqdm=False, pin_memory=False)
    return (time.perf_counter() - started) * full.num_triples / count


def run_wordnet(args) -> dict:
    import gc

    import pykeen

    phases: dict = {}
    with Phase("load_graph", phases):
        graph = _graph(args)
    log(f"{graph!r}: " + ", ".join(f"{k} {len(v):,}" for k, v in graph.splits.items()))
    valid = graph.splits["valid"]
    sample = np.random.default_rng(0).choice(len(valid), min(args.validation_triples, len(valid)), replace=False)
    graph.splits[VALIDATION_SAMPLE] = valid[np.sort(sample)]
    load_before = os.getloadavg()
    results = []
    earlier = {}
    if args.pykeen_from:
        earlier = {entry["model"]: entry for entry in json.loads(Path(args.pykeen_from).read_text())["results"]}
        missing = sorted(set(args.models) - set(earlier))
        if missing:
            sys.exit(f"{args.pykeen_from} has no PyKEEN result for {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as directory:
        factories = _pykeen_factories(graph, Path(directory))
        for model in args.models:
            epochs = earlier[model]["epochs"] if earlier else args.epochs
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
            if earlier:
                pykeen_result = {**earlier[model]["pykeen"], "from": args.pykeen_from}
            else:
                pykeen_result = run_pykeen(graph, factories, model, args, epochs, phases)
            log(f"{model} pykeen, {epochs} epochs: {pykeen_result}")
            gc.collect()
            gc.freeze()
            equal = run_tessera(graph, model, args, epochs, False, phases, f"{model}_tessera_equal_epochs")
            log(f"{model} tessera, {epochs} epochs: {equal}")
            entry = {
                "model": model,
                "epochs": epochs,
                "pykeen": pykeen_result,
                "tessera": equal,
                "mrr_ratio": round(equal["mrr"] / pykeen_result["mrr"], 3) if pykeen_result["mrr"] else None,
                "time_ratio": round(equal["train_seconds"] / pykeen_result["train_seconds"], 3),
            }
            if args.max_epochs:
                converged = run_tessera(graph, model, args, args.max_epochs, True, phases, f"{model}_tessera_converged")
                log(f"{model} tessera to convergence: {converged}")
                entry["tessera_converged"] = converged
                if model == "rotate":
                    entry["paper_mrr"] = PAPER_MRR
                    entry["converged_vs_paper"] = round(converged["mrr"] / PAPER_MRR, 3)
            results.append(entry)
    converged = [r for r in results if "converged_vs_paper" in r]
    return {
        "benchmark": "kge_wordnet",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "threads": "1 torch thread for both libraries, the process pinned to one core (taskset -c 1) by the caller",
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
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
            "convergence": f"tessera alone, {args.converge_negatives} negatives, up to {args.max_epochs} epochs "
            f"(the cap that fits the run's time), validated on {len(sample)} valid triples (seed 0) every "
            f"{args.evaluate_every}, patience {args.patience}, the best state tested",
            "evaluation": "filtered realistic ranks of the 5,000 test triples against every entity, both sides, by "
            "tessera's evaluator for both libraries (PyKEEN's trained tables put in a tessera model; PyKEEN's own "
            "evaluator needs 29 min for TransE and 110 min for RotatE on one thread)",
            "pykeen_epochs": f"as many as one epoch timed on {args.probe_share:.0%} of the training triples says fit "
            f"in {args.pykeen_minutes} min",
            "pykeen": pykeen.get_version(),
        },
        "results": results,
        "phases": phases,
        "goals": {
            "mrr_at_least_pykeen_at_equal_epochs": all((r["mrr_ratio"] or 0) >= 1 for r in results),
            "time_at_most_a_quarter_of_pykeen": all(r["time_ratio"] <= 0.25 for r in results),
            "rotate_converged_within_10_percent_of_paper": (
                all(r["converged_vs_paper"] >= 0.9 for r in converged) if converged else None
            ),
        },
    }
