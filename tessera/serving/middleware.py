"""tessera's layer inside vLLM's HTTP server, added with vLLM's ``--middleware`` flag (a pure ASGI middleware).

It sits in vLLM's own process, in front of every route, so the composition layer costs no extra network hop and
streaming passes through untouched. It

- logs every request (method, route, status, latency, running count) on the server's output and counts them in
  vLLM's Prometheus registry (``tessera_requests_total``, ``tessera_request_duration_seconds`` on ``/metrics``);
- checks the API key on every route but the open ones (vLLM's own check covers only ``/v1/...``, which would
  leave ``/classify`` and ``/pooling`` open);
- for a run with ``kg`` retrievers, enriches prompts and inputs before vLLM sees them
  (:class:`~tessera.serving.knowledge.KnowledgeFront`);
- for a classifier run, cuts ``/classify`` and ``/pooling`` inputs to the run's ``data.max_length`` tokens, as in
  training and evaluation (vLLM's ``truncate_prompt_tokens``, applied by the model's tokenizer), unless the request
  sets its own;
- counts errors per route and, for a classifier, reads the answers of ``/classify`` (the response passes on
  unchanged while a copy is kept): predicted labels, confidences, served-traffic log and drift
  (:mod:`tessera.serving.monitoring`). Other routes' responses, streams included, are not read.

The launcher configures it through the environment: ``TESSERA_SERVE_API_KEY``, ``TESSERA_SERVE_RUN_DIR`` (set only
when the run has ``kg`` retrievers), ``TESSERA_SERVE_TRUNCATE`` (a classifier run's ``data.max_length``) and
``TESSERA_SERVE_LOG_REQUESTS``, and ``TESSERA_SERVE_MONITOR`` (:func:`~tessera.serving.monitoring.monitor_environment`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import os
import sys
import time

from tessera.serving.knowledge import ENRICHED_ROUTES
from tessera.serving.launcher import LOG_PREFIX
from tessera.serving.monitoring import MONITORED_ROUTE, ClassifierMonitor, count_error

#: Routes that answer without an API key and are neither logged nor counted (probes and scrapes).
OPEN_ROUTES = ("/health", "/ping", "/version", "/metrics", "/load")
#: The classifier routes whose inputs are cut to the run's ``data.max_length`` unless the request says otherwise.
TRUNCATED_ROUTES = ("/classify", "/pooling")
#: Routes counted under their own name in the metrics; anything else is counted as ``other``.
NAMED_ROUTES = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/embeddings",
        "/classify",
        "/pooling",
        "/score",
        "/rerank",
        "/tokenize",
        "/detokenize",
    }
)


@functools.cache
def _metrics():
    """tessera's Prometheus metrics, registered once in the default registry that vLLM's ``/metrics`` serves."""
    from prometheus_client import Counter, Histogram

    requests = Counter("tessera_requests", "Requests through tessera serve", ["method", "route", "status"])
    latency = Histogram(
        "tessera_request_duration_seconds",
        "Latency of requests through tessera serve, to the last byte",
        ["route"],
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    )
    return requests, latency


class TesseraMiddleware:
    """Request log and metrics, API-key check and knowledge enrichment in front of vLLM's routes."""

    def __init__(self, app):
        self.app = app
        key = os.environ.get("TESSERA_SERVE_API_KEY")
        self.key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self.log_requests = os.environ.get("TESSERA_SERVE_LOG_REQUESTS", "1") == "1"
        self.count = 0
        run_dir = os.environ.get("TESSERA_SERVE_RUN_DIR")
        self.knowledge = None
        if run_dir:
            from tessera.core.plugins import discover
            from tessera.serving.knowledge import KnowledgeFront

            self.knowledge = KnowledgeFront.from_run_dir(run_dir, discover())
            self.knowledge.enrich(["warm up the graph before the first request"])
        truncate = os.environ.get("TESSERA_SERVE_TRUNCATE")
        self.truncate = int(truncate) if truncate else None
        self.monitor = ClassifierMonitor.from_environment(self._log)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(OPEN_ROUTES) or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        started, status, answer, failed = time.perf_counter(), [500], [], True
        monitored = self.monitor is not None and scope["method"] == "POST" and scope["path"] == MONITORED_ROUTE

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif monitored and message["type"] == "http.response.body" and status[0] == 200:
                answer.append(message.get("body", b""))
            await send(message)

        try:
            if self.key_digest is not None and not self._authorized(scope):
                failed = False
                return await self._reply(watch, 401, {"error": "Unauthorized: send Authorization: Bearer <api key>"})
            payload = None
            if scope["method"] == "POST" and (monitored or self._rewrites(scope["path"])):
                scope, receive, payload = await self._rewritten(scope, receive)
            await self.app(scope, receive, watch)
            failed = False
        finally:
            self._record(scope, status[0], failed, time.perf_counter() - started)
        if monitored and status[0] == 200:
            await self._observe(payload, b"".join(answer))

    def _authorized(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), self.key_digest
        )

    def _rewrites(self, route: str) -> bool:
        """Whether requests to ``route`` are rewritten: enriched with knowledge, or cut as the classifier was."""
        return (self.knowledge is not None and route in ENRICHED_ROUTES) or (
            self.truncate is not None and route in TRUNCATED_ROUTES
        )

    def _rewrite(self, route: str, payload: dict) -> dict:
        if self.truncate is not None and route in TRUNCATED_ROUTES:
            # The classifier was trained on inputs cut to data.max_length tokens by its tokenizer. Without a
            # truncation_side, vLLM lets the tokenizer cut them the same way (its special tokens kept); with one,
            # vLLM slices the token list and drops the final [SEP].
            payload = {"truncate_prompt_tokens": self.truncate, **payload}
        if self.knowledge is not None and route in ENRICHED_ROUTES:
            payload = self.knowledge.rewrite(route, payload)
        return payload

    async def _rewritten(self, scope, receive):
        """The request with its body rewritten by :meth:`_rewrite` where the route is rewritten (unparsable bodies
        pass unchanged), and the parsed body (None when it is no JSON object)."""
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return scope, _replay([message], receive), None
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict):
            payload = None
        elif self._rewrites(scope["path"]):
            payload = await asyncio.to_thread(self._rewrite, scope["path"], payload)
            body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        return {**scope, "headers": headers}, _replay([{"type": "http.request", "body": body}], receive), payload

    async def _observe(self, payload: dict | None, body: bytes) -> None:
        """Hand a ``/classify`` exchange to the monitor off the event loop; a failure is logged, never raised
        (the answer has already gone out)."""
        try:
            await asyncio.to_thread(self.monitor.observe, payload, body)
        except Exception as error:  # noqa: BLE001 - monitoring must not take the server down
            self._log(f"monitoring skipped a /classify answer: {type(error).__name__}: {error}")

    def _record(self, scope, status: int, failed: bool, seconds: float) -> None:
        """Count and log a finished request (``failed``: the app raised, ``status`` is then 500 unless a response
        had started)."""
        self.count += 1
        route = scope["path"] if scope["path"] in NAMED_ROUTES else "other"
        requests, latency = _metrics()
        requests.labels(scope["method"], route, str(status)).inc()
        latency.labels(route).observe(seconds)
        if failed or status >= 400:
            count_error(route, "exception" if failed else str(status))
        if self.log_requests:
            stamp = time.strftime("%H:%M:%S")
            self._log(
                f"{stamp} {scope['method']} {scope['path']} {status} {seconds * 1000:.1f} ms (request {self.count})"
            )

    @staticmethod
    def _log(line: str) -> None:
        """One line on the server's output, shown by ``tessera serve``."""
        print(f"{LOG_PREFIX}{line}", file=sys.stdout, flush=True)

    @staticmethod
    async def _reply(send, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive):
    """A ``receive`` that returns ``messages`` first, then whatever the client sends next (a disconnect)."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay
