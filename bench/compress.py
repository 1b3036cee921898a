"""Compression side by side: the movie-review classifier (the main job's composition) and SmolLM2 through vLLM.

Classifier. The main job is trained once (MiniLM + LoRA on the movie-review sentences); every tessera technique
then compresses its export in a stage that trains for no step (``model.pretrained=<export> trainer.epochs=0
compress=...``), except ``distill``, which trains a 3-layer student from it. Beside them, the peers at their best
settings: the uncompressed model in float32 and in bfloat16 (tessera's default precision), and PyTorch's own
dynamic int8 (``torch.ao.quantization.quantize_dynamic``, the classic BERT recipe). Each model is measured through
every runtime that applies (transformers in-process, ONNX Runtime in-process, vLLM's offline pooling API in a
subprocess): test accuracy on the whole test split, weights' size on disk, sentences per second at batch 1 (the
first ``--batch1`` sentences one at a time) and at batch 32 (the whole test split), the median of ``--rounds``
rounds, the in-process models interleaved in alternating order. The goal: a chain at least 2x the bf16 model's
batch-32 throughput and at least 3x smaller, within 1 point of its accuracy.

SmolLM2 (``--smollm2``). The instruction task of ``experiment=instruct`` (zero-shot, no training) evaluated by
tessera in float32 and after ``quantize`` W8A8 and W4A16 (exact match on the 200 test instructions), then each
export served by ``tessera serve`` and measured in tokens per second at concurrency 1 and 8 (64 new tokens).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/compress.py              # classifier, about 25 minutes on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/compress.py --smollm2    # and SmolLM2 served, about 15 minutes more

Runs are kept under ``--work`` and reused when complete, so a second invocation only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 32

#: The classifier variants tessera builds: name -> (overrides of the compressing stage, runtimes that run it).
#: ``from`` names the run whose export the stage starts from (``base``: the main job).
VARIANTS: dict[str, dict] = {
    "magnitude_prune_50": {"compress": ["compress=magnitude_prune"], "runtimes": ["transformers_bf16", "vllm"]},
    "structured_prune_ffn50": {
        "compress": ["compress=structured_prune", "compress.structured_prune.ffn_sparsity=0.5"],
        "runtimes": ["transformers_bf16", "vllm"],
    },
    "quantize_w8a8": {"compress": ["compress=quantize", "compress.quantize.scheme=W8A8"], "runtimes": ["vllm"]},
    "quantize_w4a16": {
        "compress": ["compress=quantize", "compress.quantize.scheme=W4A16", "compress.quantize.group_size=64"],
        "runtimes": ["vllm"],
    },
    "torchao_int8_dynamic": {
        "compress": ["compress=torchao", "compress.torchao.scheme=int8_dynamic"],
        "runtimes": ["transformers"],
    },
    "onnx_int8": {"compress": ["compress=onnx"], "runtimes": ["onnxruntime"]},
    "distill_3_layers": {
        "train": True,
        "compress": ["compress=distill", "compress.distill.layers=3", "trainer.learning_rate=1e-4"],
        "runtimes": ["transformers_bf16", "vllm"],
    },
    "chain_distill_onnx_int8": {"from": "distill_3_layers", "compress": ["compress=onnx"], "runtimes": ["onnxruntime"]},
    "chain_distill_prune_onnx_int8": {
        "from": "distill_3_layers",
        "compress": ["compress=[structured_prune,onnx]", "compress.structured_prune.ffn_sparsity=0.5"],
        "runtimes": ["onnxruntime"],
    },
}
#: The chains the goal is checked on.
CHAINS = ("chain_distill_prune_onnx_int8", "chain_distill_onnx_int8")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tessera_train(run_dir: Path, overrides: list[str]) -> Path:
    """Run ``tessera train`` into ``run_dir`` unless a complete run is there; return ``run_dir``."""
    status = run_dir / "run.json"
    if status.is_file() and json.loads(status.read_text()).get("status") == "complete":
        log(f"reusing {run_dir}")
        return run_dir
    log(f"tessera train {' '.join(overrides)}")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "tessera", "train", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
    )
    if result.returncode != 0:
        raise SystemExit(f"tessera train {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    log(f"  done in {time.perf_counter() - started:.0f} s")
    return run_dir


def weights_mb(directory: Path) -> float:
    from tessera.core.compression import weights_on_disk

    return weights_on_disk(directory) / 1e6


def test_split(run_dir: Path) -> tuple[list[str], list[int], int]:
    """The test sentences, their label indices and ``data.max_length`` of the main job."""
    from omegaconf import OmegaConf

    from tessera.core.data import load_splits

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    splits = load_splits(cfg.data)
    return [e["text"] for e in splits.test], [e["label"] for e in splits.test], cfg.data.max_length


# --- in-process runtimes: each a function from a list of texts to a (n, classes) probability array ---------------


class TransformersClassifier:
    """A transformers sequence classifier, in float32 or bfloat16 (the whole model cast), or as loaded."""

    def __init__(self, directory: Path, tokenizer, max_length: int, dtype: str | None, model=None):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = model or AutoModelForSequenceClassification.from_pretrained(directory)
        if dtype == "bf16":
            self.model = self.model.to(torch.bfloat16)
        self.model.eval()
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]):
        import torch

        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(self.model(**batch).logits.float(), -1).numpy()


class OnnxClassifier:
    """An ONNX export through ONNX Runtime (all cores)."""

    def __init__(self, directory: Path, tokenizer, max_length: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        model = next(directory.glob("*.onnx"))
        self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]):
        import numpy as np

        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in batch.items() if k in self.inputs}
        logits = self.session.run(None, feeds)[0].astype(np.float64)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)


def accuracy(classify, texts: list[str], labels: list[int]) -> float:
    import numpy as np

    predictions = np.concatenate([classify(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]).argmax(-1)
    return float((predictions == np.asarray(labels)).mean())


def rate(classify, texts: list[str], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        classify(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started)


def measure_in_process(systems: dict, texts, labels, batch1: int, rounds: int) -> dict:
    """Accuracy once, then ``rounds`` rounds of batch-1 and batch-32 throughput, alternating the order."""
    results = {name: {"accuracy": accuracy(classify, texts, labels)} for name, classify in systems.items()}
    for name, classify in systems.items():
        classify(texts[:BATCH])  # warm-up
        log(f"  {name}: accuracy {results[name]['accuracy']:.4f}")
    samples: dict[str, dict[str, list]] = {name: {"b1": [], "b32": []} for name in systems}
    for index in range(rounds):
        order = list(systems.items()) if index % 2 == 0 else list(reversed(systems.items()))
        for name, classify in order:
            samples[name]["b1"].append(rate(classify, texts[:batch1], 1))
            samples[name]["b32"].append(rate(classify, texts, BATCH))
        log(f"  round {index + 1}/{rounds} done")
    for name in systems:
        results[name]["sentences_per_s_batch1"] = statistics.median(samples[name]["b1"])
        results[name]["sentences_per_s_batch32"] = statistics.median(samples[name]["b32"])
    return results


VLLM_WORKER = r"""
import json, statistics, sys, time
from vllm import LLM

def main():
    spec = json.load(open(sys.argv[1]))
    llm = LLM(**spec["engine"])
    texts, kwargs = spec["texts"], {"use_tqdm": False, "tokenization_kwargs": spec["tokenization"]}
    probs = []
    for i in range(0, len(texts), 32):
        probs += [list(map(float, o.outputs.probs)) for o in llm.classify(texts[i : i + 32], **kwargs)]
    b1, b32 = [], []
    for _ in range(spec["rounds"]):
        started = time.perf_counter()
        for text in texts[: spec["batch1"]]:
            llm.classify([text], **kwargs)
        b1.append(spec["batch1"] / (time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(0, len(texts), 32):
            llm.classify(texts[i : i + 32], **kwargs)
        b32.append(len(texts) / (time.perf_counter() - started))
    json.dump({"probabilities": probs, "b1": statistics.median(b1), "b32": statistics.median(b32)},
              open(spec["result"], "w"))

if __name__ == "__main__":
    main()
"""


def measure_vllm(directory: Path, texts, labels, max_length: int, batch1: int, rounds: int) -> dict:
    """vLLM's offline pooling API on ``directory`` with tessera serve's engine settings (float32 for a classifier,
    bfloat16 for 4-bit weights), in a subprocess."""
    import numpy as np

    from tessera.core.plugins import discover
    from tessera.serving.launcher import engine_arguments, scratch_directory, vllm_environment
    from tessera.serving.settings import load_settings
    from tessera.serving.target import resolve

    settings = load_settings(None, [])
    target = resolve(directory, discover(), name="bench")
    scratch = scratch_directory("bench-compress-")
    spec = {
        "engine": {**engine_arguments(target, settings), "seed": 0},
        "texts": texts,
        "tokenization": {"truncation": True, "max_length": max_length},
        "batch1": batch1,
        "rounds": rounds,
        "result": str(scratch / "result.json"),
    }
    (scratch / "spec.json").write_text(json.dumps(spec))
    (scratch / "worker.py").write_text(VLLM_WORKER)
    result = subprocess.run(
        [sys.executable, str(scratch / "worker.py"), str(scratch / "spec.json")],
        capture_output=True,
        text=True,
        env=vllm_environment(scratch, settings),
        cwd=scratch,
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "vLLM failed"}
    found = json.loads((scratch / "result.json").read_text())
    predictions = np.asarray(found["probabilities"]).argmax(-1)
    return {
        "accuracy": float((predictions == np.asarray(labels)).mean()),
        "sentences_per_s_batch1": found["b1"],
        "sentences_per_s_batch32": found["b32"],
    }


def classifier(args) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    work = args.work
    base = tessera_train(work / "base", [])
    runs = {"base": base}
    for name, variant in VARIANTS.items():
        start = runs[variant.get("from", "base")] / "export"
        training = [] if variant.get("train") else ["trainer.epochs=0"]
        extra = [f"compress.distill.teacher={start}"] if name.startswith("distill") else []
        runs[name] = tessera_train(
            work / name, [f"model.pretrained={start}", "adapter=none", *training, *variant["compress"], *extra]
        )
    texts, labels, max_length = test_split(base)
    tokenizer = AutoTokenizer.from_pretrained(base / "export")

    # the peers: the uncompressed model in float32 and bfloat16, and PyTorch's dynamic int8
    peers_dir = work / "peers"
    peers_dir.mkdir(exist_ok=True)
    fp32 = AutoModelForSequenceClassification.from_pretrained(base / "export")
    fp32.to(torch.bfloat16).save_pretrained(peers_dir / "bf16")
    dynamic = torch.ao.quantization.quantize_dynamic(
        AutoModelForSequenceClassification.from_pretrained(base / "export"), {torch.nn.Linear}, dtype=torch.qint8
    )
    torch.save(dynamic.state_dict(), peers_dir / "dynamic_int8.pt")
    sizes = {
        "fp32": weights_mb(base / "export"),
        "bf16": weights_mb(peers_dir / "bf16"),
        "torch_dynamic_int8": (peers_dir / "dynamic_int8.pt").stat().st_size / 1e6,
        **{name: weights_mb(runs[name] / "export") for name in VARIANTS},
    }
    systems = {
        "fp32/transformers": TransformersClassifier(base / "export", tokenizer, max_length, None),
        "bf16/transformers": TransformersClassifier(base / "export", tokenizer, max_length, "bf16"),
        "torch_dynamic_int8/transformers": TransformersClassifier(None, tokenizer, max_length, None, model=dynamic),
    }
    vllm_dirs = {"fp32/vllm": base / "export"}
    for name, variant in VARIANTS.items():
        export = runs[name] / "export"
        for runtime in variant["runtimes"]:
            key = f"{name}/{runtime.removesuffix('_bf16')}"
            if runtime == "vllm":
                vllm_dirs[key] = export
            elif runtime == "onnxruntime":
                systems[key] = OnnxClassifier(export, tokenizer, max_length)
            else:
                dtype = "bf16" if runtime.endswith("_bf16") else None
                systems[key] = TransformersClassifier(export, tokenizer, max_length, dtype)
    log(f"measuring {len(systems)} in-process systems on {len(texts)} test sentences")
    results = measure_in_process(systems, texts, labels, args.batch1, args.rounds)
    for key, directory in vllm_dirs.items():
        log(f"measuring {key} (vLLM offline, tessera serve's engine settings)")
        results[key] = measure_vllm(directory, texts, labels, max_length, args.batch1, args.rounds)
        log(f"  {results[key]}")
    for key, values in results.items():
        values["size_mb"] = round(sizes[key.split("/")[0]], 2)
        values["tessera_metrics"] = key.split("/")[0] in runs and _final_test(runs[key.split("/")[0]])
    reference = results["bf16/transformers"]
    for values in results.values():
        if "accuracy" in values:
            values["vs_bf16"] = {
                "speed_batch32": round(values["sentences_per_s_batch32"] / reference["sentences_per_s_batch32"], 3),
                "speed_batch1": round(values["sentences_per_s_batch1"] / reference["sentences_per_s_batch1"], 3),
                "smaller": round(reference["size_mb"] / values["size_mb"], 3),
                "accuracy_points": round(100 * (values["accuracy"] - reference["accuracy"]), 2),
            }
    goal = {}
    for key, values in results.items():
        if key.split("/")[0] in CHAINS and "vs_bf16" in values:
            ratios = values["vs_bf16"]
            goal[key] = {
                **ratios,
                "met": ratios["speed_batch32"] >= 2 and ratios["smaller"] >= 3 and ratios["accuracy_points"] >= -1,
            }
    return {"systems": results, "goal_2x_faster_3x_smaller_within_1_point": goal}


def _final_test(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keep = ("accuracy", "macro_f1")
    found = {"test": {k: metrics["test"][k] for k in keep}}
    if "compression" in metrics and "uncompressed" in metrics["compression"]:
        found["uncompressed_test"] = {k: metrics["compression"]["uncompressed"]["test"][k] for k in keep}
    return found


def smollm2(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import serve as serve_bench

    work = args.work / "smollm2"
    zero_shot = ["experiment=instruct", "stages=[]", "adapter=none", "trainer.epochs=0"]
    runs = {
        "fp32": tessera_train(work / "uncompressed", zero_shot),
        "w8a8": tessera_train(work / "w8a8", [*zero_shot, "compress=quantize", "compress.quantize.scheme=W8A8"]),
        "w4a16": tessera_train(
            work / "w4a16",
            [*zero_shot, "compress=quantize", "compress.quantize.scheme=W4A16", "compress.quantize.group_size=64"],
        ),
    }
    results = {}
    for name, run_dir in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"exact_match": metrics["test"]["exact_match"], "size_mb": weights_mb(run_dir / "export")}
    for name, run_dir in runs.items():
        log(f"serving {name}")
        server = serve_bench.Server(run_dir, ["dtype=bfloat16"], tessera=True)
        try:
            server.wait_ready()
            served = json.loads(serve_bench.urllib.request.urlopen(f"{server.url}/v1/models").read())["data"][0]["id"]
            serve_bench.load(server.url, served, 4)  # warm-up
            rounds = {c: [] for c in (1, 8)}
            for _ in range(args.rounds):
                for concurrency in rounds:
                    rounds[concurrency].append(serve_bench.load(server.url, served, concurrency)["tokens_per_s"])
            for concurrency, values in rounds.items():
                results[name][f"tokens_per_s_c{concurrency}"] = statistics.median(values)
        finally:
            server.stop()
        log(f"  {results[name]}")
    reference = results["fp32"]
    for values in results.values():
        values["vs_bf16_served"] = {
            **{f"speed_c{c}": round(values[f"tokens_per_s_c{c}"] / reference[f"tokens_per_s_c{c}"], 3) for c in (1, 8)},
            "smaller_than_fp32_export": round(reference["size_mb"] / values["size_mb"], 3),
            "exact_match_points": round(100 * (values["exact_match"] - reference["exact_match"]), 2),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tessera-bench-compress")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch1", type=int, default=64, help="sentences measured one at a time")
    parser.add_argument("--smollm2", action="store_true", help="also quantize and serve SmolLM2")
    parser.add_argument("--skip-classifier", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rounds": args.rounds}
    if not args.skip_classifier:
        report["classifier"] = classifier(args)
    if args.smollm2:
        report["smollm2"] = smollm2(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
