"""Raw parse vs cached reload: WordNet (through NLTK) and an RDF file (WordNet written as N-Triples, parsed by
rdflib), each parsed from its source and reloaded from tessera's binary cache (``.npy`` arrays + JSON strings).

The parses and the reloads alternate (parse, reload x ``--reloads``, parse, ...) for ``--parses`` rounds; medians
and the ratio parse / reload are reported, with the file and cache sizes.

Usage: ``.venv/bin/python bench/kg_load.py [--parses N] [--reloads N]``; one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(function):
    gc.collect()
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parses", type=int, default=2)
    parser.add_argument("--reloads", type=int, default=3)
    args = parser.parse_args()

    from tessera.core.plugins import discover
    from tessera.graphs.loaders import load_graph
    from tessera.graphs.loaders.wordnet import WordNetLoader
    from tessera.graphs.rdf import read_rdf, write_rdf
    from tessera.graphs.store import KnowledgeGraph
    from tessera.graphs.wordnet import wordnet

    wordnet()  # NLTK's reader opens its index files once per process: count it in neither side
    graph = load_graph("wordnet", discover())
    results = {}
    with tempfile.TemporaryDirectory(prefix="kg-load-") as tmp:
        rdf_file = write_rdf(graph, Path(tmp) / "wordnet.nt")
        log(f"wrote {rdf_file} ({size_mb(rdf_file)} MB)")
        sources = {
            "wordnet": (lambda: WordNetLoader().load(), None),
            "rdf_ntriples": (lambda: read_rdf(rdf_file), rdf_file),
        }
        for name, (parse, source_file) in sources.items():
            cache = Path(tmp) / f"{name}-cache"
            parse_times, reload_times = [], []
            for round_number in range(args.parses):
                seconds, parsed = timed(parse)
                parse_times.append(seconds)
                log(f"{name}: parse {round_number + 1}: {seconds:.2f} s, {parsed!r}")
                if round_number == 0:
                    parsed.save(cache)
                del parsed
                for _ in range(args.reloads):
                    seconds, reloaded = timed(functools.partial(KnowledgeGraph.load, cache))
                    reload_times.append(seconds)
                    triples = reloaded.num_triples
                    del reloaded
            parse_median, reload_median = statistics.median(parse_times), statistics.median(reload_times)
            results[name] = {
                "triples": triples,
                "parse_s": [round(t, 2) for t in parse_times],
                "reload_s": [round(t, 3) for t in reload_times],
                "parse_median_s": round(parse_median, 2),
                "reload_median_s": round(reload_median, 3),
                "speedup": round(parse_median / reload_median, 1),
                "reload_share_of_parse": f"{100 * reload_median / parse_median:.2f} %",
                "cache_mb": size_mb(cache),
                **({"file_mb": size_mb(source_file)} if source_file else {}),
            }
    print(
        json.dumps(
            {
                "benchmark": "kg_load",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "what": "parse from the source vs reload of tessera's binary cache (same graph)",
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
