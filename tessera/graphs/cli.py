"""``tessera kg info | load | query | embed``: knowledge graphs on the command line.

``SOURCE`` is a graph source (``wordnet``, ``wn18rr``, ``go``, ``commonsense``, ``pykeen:nations``, ``tsv:DIR``,
``rdf:FILE`` or a path to an RDF file); ``tessera kg info`` without one lists the installed loaders.
"""

from __future__ import annotations

import argparse
import json
import time

from tessera.core.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera kg", description="Load, inspect, query and embed knowledge graphs.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="counts, relations and best-connected entities (no SOURCE: the loaders)")
    info.add_argument("source", nargs="?", metavar="SOURCE")
    info.add_argument("--top", type=int, default=10, help="how many relations and entities to list")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    load = commands.add_parser("load", help="parse a source into the binary cache; optionally export it as RDF")
    load.add_argument("source", metavar="SOURCE")
    load.add_argument("--refresh", action="store_true", help="parse again even when the cache is fresh")
    load.add_argument("--export", metavar="FILE", help="write the graph as RDF (.ttl, .nt, .rdf, .jsonld)")
    load.add_argument("--format", help="RDF format of --export when the suffix does not say (turtle, nt, xml, json-ld)")

    query = commands.add_parser("query", help="link TEXT and retrieve facts around it, or run a SPARQL query")
    query.add_argument("source", metavar="SOURCE")
    query.add_argument("text", nargs="?", help="text to link entities in")
    query.add_argument("--entity", action="append", default=[], metavar="KEY", help="an entity key (repeatable)")
    query.add_argument("--hops", type=int, default=2)
    query.add_argument("--relation", action="append", default=[], metavar="NAME", help="only these relations")
    query.add_argument("--max-facts", type=int, default=20)
    query.add_argument("--ranking", choices=("pagerank", "embedding"), default="pagerank")
    query.add_argument("--embeddings", metavar="FILE", help="embeddings for --ranking embedding (tessera kg embed)")
    query.add_argument("--disambiguation", choices=("prior", "degree"), default="prior")
    query.add_argument("--sparql", metavar="QUERY", help="a SPARQL query handed to rdflib instead of retrieval")
    query.add_argument("--json", action="store_true", help="machine-readable output")

    embed = commands.add_parser("embed", help="train KG embeddings and report filtered link-prediction metrics")
    embed.add_argument("source", metavar="SOURCE")
    embed.add_argument("--model", default="transe", help="transe, distmult, complex or rotate")
    embed.add_argument("--dim", type=int, default=64)
    embed.add_argument("--epochs", type=int, default=100)
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--lr", type=float, default=0.01, help="learning rate (Adam)")
    embed.add_argument("--negatives", type=int, default=1, help="corrupted triples per positive")
    embed.add_argument(
        "--sampling",
        default="auto",
        help="triple (each positive its own negatives), shared (one draw per batch) or auto (shared above 10,000 entities)",
    )
    embed.add_argument(
        "--loss", default="default", help="default (the model's PyKEEN default), margin, softplus or nssa"
    )
    embed.add_argument("--margin", type=float, default=1.0, help="margin of the margin loss; RotatE's / nssa's gamma")
    embed.add_argument(
        "--adversarial-temperature", type=float, default=1.0, help="softmax temperature of the nssa loss's weights"
    )
    embed.add_argument(
        "--init",
        default="default",
        help="entity initialisation: default (uniform:0.5 for RotatE, pyg otherwise), pyg (torch_geometric's) or "
        "uniform:B (uniform in [-B, B])",
    )
    embed.add_argument("--encoder", default="none", help="none or rgcn")
    embed.add_argument("--seed", type=int, default=0)
    embed.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small graphs)")
    embed.add_argument("--evaluate", help="split to evaluate on, or 'none' (default: test when the graph has one)")
    embed.add_argument(
        "--evaluate-every", type=int, default=0, metavar="N", help="validate every N epochs, keep the best (0: never)"
    )
    embed.add_argument(
        "--patience", type=int, default=0, help="stop after this many validations without a better MRR (0: never)"
    )
    embed.add_argument("--validation-split", default="valid", help="the split validated on (default: valid)")
    embed.add_argument(
        "--eval-batch-size", type=int, default=0, help="scores per evaluation block (0: from the memory available)"
    )
    embed.add_argument("--out", metavar="FILE", help="embeddings file (default: the graph's cache)")
    embed.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str]) -> int:
    """Run ``tessera kg`` with ``argv``. User errors raise a ``TesseraError``, which ``tessera`` prints as one
    line before exiting with status 2."""
    from tessera.core.plugins import discover

    args = _parser().parse_args(argv)
    return {"info": info, "load": load, "query": query, "embed": embed}[args.command](args, discover())


def _print(payload: dict, as_json: bool, lines: list[str]) -> None:
    print(json.dumps(payload, indent=2) if as_json else "\n".join(lines))


def info(args, plugins) -> int:
    from tessera.graphs.loaders import cache_dir, load_graph, resolve

    if args.source is None:
        classes = {spec.name: spec.cls for spec in plugins.registry.specs() if spec.family == "kg_loader"}
        payload = {
            "loaders": [
                {"name": n, "summary": c.summary, "argument": c.argument_help} for n, c in sorted(classes.items())
            ]
        }
        _print(payload, args.json, [f"{n:<12} {c.summary}" for n, c in sorted(classes.items())])
        return 0
    graph = load_graph(args.source, plugins)
    counts = sorted(zip(*_relation_counts(graph)), key=lambda item: -item[1])
    top = graph.degree.argsort()[::-1][: args.top]
    payload = {
        "name": graph.name,
        "source": args.source,
        "entities": graph.num_entities,
        "relations": graph.num_relations,
        "triples": graph.num_triples,
        "aliases": len(graph.alias_names),
        "splits": {name: int(len(indices)) for name, indices in graph.splits.items()},
        "top_relations": [{"relation": r, "triples": int(n)} for r, n in counts[: args.top]],
        "top_entities": [
            {"entity": graph.entities[i], "label": graph.labels[i], "degree": int(graph.degree[i])} for i in top
        ],
        "cache": str(cache_dir(resolve(args.source, plugins))),
    }
    lines = [
        f"{graph.name}: {graph.num_entities:,} entities, {graph.num_relations} relations, "
        f"{graph.num_triples:,} triples, {len(graph.alias_names):,} aliases",
        *([f"splits: {', '.join(f'{k} {v:,}' for k, v in payload['splits'].items())}"] if graph.splits else []),
        "relations: " + ", ".join(f"{r} ({n:,})" for r, n in counts[: args.top]),
        "best connected: " + ", ".join(f"{e['entity']} ({e['degree']})" for e in payload["top_entities"]),
        f"cache: {payload['cache']}",
    ]
    _print(payload, args.json, lines)
    return 0


def _relation_counts(graph):
    import numpy as np

    return graph.relations, np.bincount(graph.triples[:, 1], minlength=graph.num_relations).tolist()


def load(args, plugins) -> int:
    from tessera.graphs.loaders import cache_dir, load_graph, resolve
    from tessera.graphs.store import KnowledgeGraph

    directory = cache_dir(resolve(args.source, plugins))
    cached = KnowledgeGraph.cached_meta(directory) is not None and not args.refresh
    started = time.perf_counter()
    graph = load_graph(args.source, plugins, refresh=args.refresh)
    seconds = time.perf_counter() - started
    print(f"{graph!r} {'read from the cache' if cached else 'parsed and cached'} in {seconds:.2f} s at {directory}")
    if args.export:
        from tessera.graphs.rdf import write_rdf

        started = time.perf_counter()
        path = write_rdf(graph, args.export, args.format)
        print(f"wrote {path} in {time.perf_counter() - started:.2f} s")
    return 0


def query(args, plugins) -> int:
    from tessera.graphs.loaders import load_graph

    graph = load_graph(args.source, plugins)
    if args.sparql:
        from tessera.graphs.rdf import sparql

        rows = sparql(graph, args.sparql)
        _print({"rows": rows}, args.json, ["\t".join(str(v) for v in row.values()) for row in rows])
        return 0
    if not args.text and not args.entity:
        raise ConfigError("tessera kg query needs TEXT, --entity KEY or --sparql QUERY")
    from tessera.graphs.linking import EntityLinker
    from tessera.graphs.retrieval import Retriever

    embeddings = None
    if args.ranking == "embedding":
        if not args.embeddings:
            raise ConfigError("--ranking embedding needs --embeddings FILE (write one with `tessera kg embed`)")
        from tessera.graphs.embeddings import TrainedEmbeddings

        embeddings = TrainedEmbeddings.load(args.embeddings).entities
    retriever = Retriever(
        graph,
        hops=args.hops,
        relations=args.relation,
        max_facts=args.max_facts,
        ranking=args.ranking,
        embeddings=embeddings,
        linker=EntityLinker(graph, disambiguation=args.disambiguation) if args.text else None,
    )
    result = retriever.retrieve(args.text, args.entity)
    unknown = [key for key in args.entity if graph.entity_id(key) is None]
    lines = [f"linked: {', '.join(f'{m.text} -> {m.key}' for m in result.mentions) or 'nothing'}"] if args.text else []
    lines += [f"unknown entities (ignored): {', '.join(unknown)}"] if unknown else []
    lines += [f"{len(result)} facts:"] + [f"  {sentence}" for sentence in result.sentences()]
    _print({**result.to_json(), "unknown_entities": unknown}, args.json, lines)
    return 0


def embed(args, plugins) -> int:
    from tessera.graphs.embeddings import KGEConfig, embeddings_path, train_embeddings
    from tessera.graphs.loaders import load_graph

    config = KGEConfig(
        model=args.model,
        dim=args.dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        negatives=args.negatives,
        sampling=args.sampling,
        loss=args.loss,
        margin=args.margin,
        adversarial_temperature=args.adversarial_temperature,
        init=args.init,
        encoder=args.encoder,
        seed=args.seed,
        threads=args.threads,
        evaluate_every=args.evaluate_every,
        patience=args.patience,
        validation_split=args.validation_split,
        eval_batch_size=args.eval_batch_size,
    )
    config.check()
    graph = load_graph(args.source, plugins)
    evaluate = args.evaluate or ("test" if "test" in graph.splits else "none")
    evaluate = None if evaluate == "none" else evaluate
    trained = train_embeddings(
        graph,
        config,
        evaluate=evaluate,
        log=None if args.json else lambda line: print(line, flush=True),
        progress=not args.json,
    )
    path = trained.save(args.out or embeddings_path(args.source, config, plugins))
    epochs = trained.metrics.get("validation", {}).get("epochs_trained", config.epochs)
    payload = {
        "graph": graph.name,
        "model": config.model,
        "dim": config.dim,
        "epochs": epochs,
        "seconds": round(trained.seconds, 3),
        "metrics": trained.metrics,
        "embeddings": str(path),
    }
    lines = [
        f"trained {config.model} (dim {config.dim}, {epochs} epochs) on {graph.name} in "
        f"{trained.seconds:.1f} s; embeddings: {path}"
    ]
    if "validation" in trained.metrics:
        found = trained.metrics["validation"]
        lines += [
            f"best {config.validation_split} MRR {found['best_mrr']:.4f} at epoch {found['best_epoch']} of "
            f"{found['epochs_trained']}{' (stopped early)' if found['stopped_early'] else ''}: these embeddings"
        ]
    if "both" in trained.metrics:
        lines += [f"{trained.metrics['split']} ({trained.metrics['triples']:,} triples):"]
        lines += [
            f"{side:>5}: " + "  ".join(f"{k} {v:.4f}" for k, v in trained.metrics[side].items())
            for side in ("both", "head", "tail")
        ]
    _print(payload, args.json, lines)
    return 0
