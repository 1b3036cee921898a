"""tessera serve without a model server: what to serve, bad input in one line, and tessera's layer inside vLLM's
HTTP server (API key, request metrics, knowledge enrichment, streaming) on a real ASGI app.

:class:`Served` (a running ``tessera serve``) is shared with the test modules that start real vLLM servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, plugins, tessera, trained_max_length
from tessera.core.techniques import KGRetriever
from tessera.serving.knowledge import KnowledgeFront
from tessera.serving.settings import kv_cache_bytes, load_settings
from tessera.serving.target import resolve


class Served:
    """``tessera serve PATH --port 0 ARGS`` in a subprocess with its own short ``TMPDIR`` (vLLM's IPC socket paths
    must stay short), which must be empty after it stops; ``url`` and ``models`` come from its ready line."""

    def __init__(self, path: Path, *args: str, timeout: float = 900):
        self.scratch, self.lines = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp")), queue.Queue()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(self.scratch)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tessera", "serve", str(path), "--port", "0", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.output: list[str] = []
        deadline = time.monotonic() + timeout
        while (ready := re.search(r"ready at (\S+) models: (.+?) \(", self.output[-1] if self.output else "")) is None:
            if time.monotonic() > deadline or self.process.poll() is not None and self.lines.empty():
                self.process.kill()
                shutil.rmtree(self.scratch, ignore_errors=True)
                raise AssertionError("tessera serve did not get ready:\n" + "".join(self.output)[-3000:])
            try:
                self.output.append(self.lines.get(timeout=1))
            except queue.Empty:
                pass
        self.url, self.models = ready.group(1), ready.group(2).split(", ")
        self.server_pids = children(self.process.pid)

    def stop(self, signum=signal.SIGTERM) -> str:
        """Stop it with ``signum``; its whole output. It must exit 0 and leave no process or file behind."""
        if self.process.poll() is not None:
            return "".join(self.output)
        self.process.send_signal(signum)
        assert self.process.wait(timeout=120) == 0
        time.sleep(0.5)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        output = "".join(self.output)
        assert "tessera serve: stopped" in output, output[-2000:]
        left = [p for p in Path("/proc").glob("[0-9]*") if process_group(p) in self.server_pids]
        assert self.server_pids and not left, left
        assert not list(self.scratch.iterdir()), list(self.scratch.iterdir())
        self.scratch.rmdir()
        return output


def process_group(proc: Path) -> int | None:
    """The process group of the live process ``/proc/<pid>`` (None when it has gone or is a zombie)."""
    try:
        state, _, group = (proc / "stat").read_text().rpartition(")")[2].split()[:3]
        return None if state == "Z" else int(group)
    except (OSError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The ids of the direct children of ``pid``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int((proc / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def fails_in_one_line(result, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]


def write_config(directory, **config) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))


def test_a_run_without_an_export(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: {name: tiny}\ndata: {name: movie_reviews}\n")
    (run / "run.json").write_text('{"status": "failed"}')
    fails_in_one_line(tessera("serve", str(run)), "has no export (run status: failed): serve a run that completed")


def test_a_directory_that_holds_no_model(tmp_path):
    fails_in_one_line(tessera("serve", str(tmp_path)), "is neither a run directory")
    fails_in_one_line(tessera("predict", str(tmp_path / "missing"), "x.txt"), "does not exist")


def test_an_architecture_that_is_not_served(tmp_path):
    write_config(tmp_path / "encoder", architectures=["BertModel"], hidden_size=64, num_attention_heads=2)
    fails_in_one_line(tessera("serve", str(tmp_path / "encoder")), "holds a BertModel, which tessera serve does not")


def test_attention_heads_too_narrow_for_vllm_on_cpu(tmp_path):
    write_config(
        tmp_path / "narrow", architectures=["BertForSequenceClassification"], hidden_size=32, num_attention_heads=2
    )
    fails_in_one_line(tessera("serve", str(tmp_path / "narrow")), "vLLM on CPU needs at least 32")


def test_an_unmerged_encoder_lora_adapter(smoke_run):
    fails_in_one_line(
        tessera("serve", str(smoke_run / "export" / "adapters" / "lora")),
        "is an unmerged LoRA adapter of a classifier, and vLLM has no LoRA for classifiers: serve the merged model",
    )


def test_a_port_in_use(smoke_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails_in_one_line(tessera("serve", str(smoke_run), "--port", str(port)), f"port {port} on 127.0.0.1 is in use")


def test_serve_settings_are_checked(smoke_run):
    fails_in_one_line(tessera("serve", str(smoke_run), "dtyp=float32"), "unknown serve setting 'dtyp=float32'")
    fails_in_one_line(tessera("serve", str(smoke_run), "max_num_seqs=many"), "invalid value in 'max_num_seqs=many'")


def test_a_classifier_run_is_served_merged(smoke_run):
    target = resolve(smoke_run, plugins())
    assert target.kind == "classify" and target.model_dir == smoke_run / "export"
    assert target.name == "tiny-movie_reviews" and target.adapters == {}
    assert "served merged" in target.notes[0] and "no LoRA for classifiers" in target.notes[0]
    assert resolve(smoke_run / "export", plugins()).model_dir == target.model_dir
    settings = load_settings(target.run_cfg, ["port=0", "serve.max_num_seqs=4"])
    assert (settings.host, settings.port, settings.max_num_seqs) == ("127.0.0.1", 0, 4)
    assert kv_cache_bytes(settings, target.model_dir, "float32") == 64 * 2**20


def test_a_multi_stage_run_serves_its_last_stage_with_an_export(smoke_run, tmp_path):
    import shutil

    run = tmp_path / "staged"
    (run / ".hydra").mkdir(parents=True)
    from omegaconf import OmegaConf

    config = (smoke_run / ".hydra" / "config.yaml").read_text()
    staged = OmegaConf.merge(OmegaConf.create(config), {"stages": [{"name": n} for n in ("first", "second", "third")]})
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(staged))
    for stage in ("first", "second"):
        shutil.copytree(smoke_run / "export", run / "stages" / stage / "export")
        (run / "stages" / stage / "config.yaml").write_text(config)
        (run / "stages" / stage / "run.json").write_text('{"status": "complete"}')
    target = resolve(run, plugins())
    assert target.model_dir == run / "stages" / "second" / "export"
    assert target.notes[0].startswith("serving the last stage, second")
    assert resolve(run / "stages" / "first", plugins()).model_dir == run / "stages" / "first" / "export"


class Bracketed(KGRetriever):
    """A real retriever of the family protocol: it appends a fact about every word it knows."""

    name = "bracketed"
    facts = {"paris": "paris capital_of france", "ball": "ball is_a toy"}

    def enrich(self, examples, run):
        return [
            {
                **e,
                "text": e["text"]
                + "".join(f" [{self.facts[w]}]" for w in e["text"].lower().split() if w in self.facts),
            }
            for e in examples
        ]


def test_the_knowledge_front_enriches_every_kind_of_request():
    front = KnowledgeFront([Bracketed(Bracketed.Config())])
    assert front.rewrite("/v1/completions", {"prompt": "paris is", "max_tokens": 3}) == {
        "prompt": "paris is [paris capital_of france]",
        "max_tokens": 3,
    }
    assert front.rewrite("/classify", {"input": ["a ball", "nothing"]})["input"] == [
        "a ball [ball is_a toy]",
        "nothing",
    ]
    assert front.rewrite("/v1/completions", {"prompt": [1, 2, 3]}) == {"prompt": [1, 2, 3]}
    chat = front.rewrite(
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "paris"},
                {"role": "assistant", "content": "yes"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a ball"}, {"type": "image_url", "image_url": "x"}],
                },
            ]
        },
    )["messages"]
    assert chat[1]["content"] == "paris" and chat[0]["content"] == "be brief"
    assert chat[3]["content"] == [
        {"type": "text", "text": "a ball [ball is_a toy]"},
        {"type": "image_url", "image_url": "x"},
    ]


async def echo_app(scope, receive, send):
    """An ASGI app that answers with the body it received, in two chunks (a stream)."""
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    length = dict(scope["headers"]).get(b"content-length", b"-").decode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-length", length.encode())]})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    await send({"type": "http.response.body", "body": body[len(body) // 2 :]})


def call(app, method, path, body=b"", headers=None):
    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, content=body, headers=headers or {})

    return asyncio.run(go())


@pytest.fixture
def middleware(monkeypatch):
    from tessera.serving.middleware import TesseraMiddleware

    monkeypatch.setenv("TESSERA_SERVE_API_KEY", "sesame")
    monkeypatch.delenv("TESSERA_SERVE_RUN_DIR", raising=False)
    layer = TesseraMiddleware(echo_app)
    layer.knowledge = KnowledgeFront([Bracketed(Bracketed.Config())])
    return layer


def test_the_api_key_guards_every_route_but_the_probes(middleware):
    key = {"Authorization": "Bearer sesame"}
    assert call(middleware, "POST", "/classify", b"{}").status_code == 401
    assert call(middleware, "POST", "/v1/completions", b"{}", {"Authorization": "Bearer wrong"}).status_code == 401
    assert call(middleware, "POST", "/classify", b"{}", key).status_code == 200
    for probe in ("/health", "/metrics"):
        assert call(middleware, "GET", probe).status_code == 200


def test_prompts_are_enriched_and_everything_else_passes_unchanged(middleware):
    key = {"Authorization": "Bearer sesame"}
    answer = call(middleware, "POST", "/v1/completions", json.dumps({"prompt": "paris is"}).encode(), key)
    assert json.loads(answer.content) == {"prompt": "paris is [paris capital_of france]"}
    assert answer.headers["x-length"] == str(len(answer.content))
    for route, body in (("/v1/completions", b'{"prompt": "paris'), ("/tokenize", b'{"prompt": "paris"}')):
        assert call(middleware, "POST", route, body, key).content == body


def test_requests_are_counted_in_the_prometheus_registry(middleware):
    from prometheus_client import REGISTRY

    def count(status):
        labels = {"method": "POST", "route": "/pooling", "status": status}
        return REGISTRY.get_sample_value("tessera_requests_total", labels) or 0

    before_ok, before_denied = count("200"), count("401")
    call(middleware, "POST", "/pooling", b'{"input": "x"}', {"Authorization": "Bearer sesame"})
    call(middleware, "POST", "/pooling", b'{"input": "x"}')
    assert (count("200"), count("401")) == (before_ok + 1, before_denied + 1)
    assert REGISTRY.get_sample_value("tessera_request_duration_seconds_count", {"route": "/pooling"}) >= 2


def test_classifier_inputs_are_cut_to_the_run_max_length_unless_the_request_says(monkeypatch):
    from tessera.serving.middleware import TesseraMiddleware

    monkeypatch.delenv("TESSERA_SERVE_API_KEY", raising=False)
    monkeypatch.delenv("TESSERA_SERVE_RUN_DIR", raising=False)
    monkeypatch.setenv("TESSERA_SERVE_TRUNCATE", "47")
    layer = TesseraMiddleware(echo_app)
    cut = json.loads(call(layer, "POST", "/classify", b'{"input": ["a long review"]}').content)
    assert cut == {"truncate_prompt_tokens": 47, "input": ["a long review"]}
    own = json.loads(call(layer, "POST", "/pooling", b'{"input": "x", "truncate_prompt_tokens": 8}').content)
    assert own["truncate_prompt_tokens"] == 8
    assert json.loads(call(layer, "POST", "/v1/completions", b'{"prompt": "p"}').content) == {"prompt": "p"}


def test_a_classifier_run_tells_the_server_its_max_length(smoke_run):
    target = resolve(smoke_run, plugins())
    assert target.truncation == trained_max_length(smoke_run) == 48
