"""Serving an output-space ensemble: each member behind its own vLLM server, one endpoint in front of them.

An output-space ensemble's export (:func:`tessera.core.ensembling.export_outputs`) is ``ensemble.json`` and a Hugging
Face classifier per member under ``members/<name>/``. ``tessera serve`` starts every member's vLLM server at once on
the loopback address (pooling runner, inputs cut to the stage's ``data.max_length``) and answers ``POST /classify``
itself (:class:`EnsembleServer`, a small threaded HTTP server): the request goes to every member, and the members'
probabilities are combined by the ensembler that made the export (from the plugin registry, its learned state
loaded from ``ensemble.json``), so the answer equals the stage's ``predictions.jsonl``. ``"members": true`` in a
request adds each member's probabilities. ``tessera predict`` runs the same combination in batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tessera.core.ensembling import ENSEMBLE_FILE
from tessera.serving.target import ServeError, ServeTarget, check_head_dim, run_config, vllm_refusal

#: What the ensemble endpoint answers (the ready line of ``tessera serve``).
ROUTE = 'POST /classify: combined probabilities, each member\'s with "members": true'


def ensemble_export(path) -> Path | None:
    """The export directory of the output-space ensemble ``path`` names (the export itself, its stage or run
    directory, or a job whose last exported stage is an ensemble); None when ``path`` is no such ensemble."""
    path = Path(path).expanduser().resolve()
    candidates = [path, path / "export"]
    if (path / "stages").is_dir() and not (path / "export").is_dir():
        stages = [path / "stages" / name / "export" for name in _stage_names(path)]
        exported = [e for e in stages if (e / "config.json").is_file() or (e / ENSEMBLE_FILE).is_file()]
        candidates += exported[-1:]
    return next((c for c in candidates if (c / ENSEMBLE_FILE).is_file()), None)


def _stage_names(job_dir: Path) -> list[str]:
    """The stages of a job directory in order: from its ``run.json``, else from its config."""
    status = job_dir / "run.json"
    stages = json.loads(status.read_text(encoding="utf-8")).get("stages") if status.is_file() else None
    if stages:
        return list(stages)
    cfg = run_config(job_dir)
    return [stage.name for stage in (cfg.get("stages") or [])] if cfg is not None else []


@dataclass
class Ensemble:
    """An output-space ensemble's export: its members, weights and the fitted ensembler that combines them."""

    export: Path
    description: dict
    combiner: object

    @classmethod
    def load(cls, export: Path, plugins) -> Ensemble:
        """Read ``ensemble.json`` and restore its ensembler from ``plugins`` (a
        :class:`~tessera.core.plugins.Plugins`)."""
        try:
            description = json.loads((export / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ServeError(f"cannot read {export / ENSEMBLE_FILE} ({error}): re-run the ensemble stage") from None
        spec = plugins.registry.get("ensemble", description["method"])
        combiner = spec.cls(spec.cls.Config(members=[m["name"] for m in description["members"]]))
        combiner.load_state(description.get("state") or {})
        return cls(export, description, combiner)

    @property
    def labels(self) -> list[str]:
        """The class names, in index order."""
        return self.description["labels"]

    @property
    def member_names(self) -> list[str]:
        """The members' names, in ``ensemble.json`` order."""
        return [m["name"] for m in self.description["members"]]

    def targets(self, served: bool = True) -> dict[str, ServeTarget]:
        """Each member as a classifier to run, its inputs cut to the stage's ``data.max_length``; when ``served``
        (by vLLM's server), a ``ServeError`` for a member vLLM cannot serve."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.create({"data": {"max_length": self.description.get("max_length")}})
        targets = {}
        for member in self.description["members"]:
            model_dir = self.export / member["path"]
            if not (model_dir / "config.json").is_file():
                raise ServeError(f"ensemble member {member['name']} has no model in {model_dir}: re-export it")
            refusal = vllm_refusal(model_dir) if served else None
            if refusal:
                raise ServeError(f"ensemble member {member['name']}: {refusal}")
            if served:
                check_head_dim(model_dir)
            targets[member["name"]] = ServeTarget(model_dir, "classify", member["name"], run_cfg=cfg)
        return targets

    def combine(self, probabilities: list):
        """The ensemble's probabilities (a numpy array) from the members' (one ``[texts, classes]`` list each)."""
        import numpy as np

        return self.combiner.combine([np.asarray(p, dtype=np.float64) for p in probabilities], self.weights)

    @property
    def weights(self) -> list[float]:
        """The members' normalised weights."""
        return self.description["weights"]


def predict_ensemble(path, texts: list[str], engine: str, settings) -> tuple[list[str], list, str]:
    """The ensemble's probabilities for ``texts`` with every member run by ``engine`` (``auto``, ``vllm`` or
    ``transformers``, as for one model); ``(labels, probabilities, engine used)``."""
    from tessera.core.plugins import discover
    from tessera.serving.predict import _transformers_results, _vllm_results, choose_engine

    ensemble = Ensemble.load(ensemble_export(path), discover())
    produce = {"vllm": _vllm_results, "transformers": _transformers_results}
    used, outputs = set(), []
    for target in ensemble.targets(served=False).values():
        chosen = choose_engine(engine, target)  # auto: vLLM where it serves the member, else transformers
        if chosen == "vllm":
            check_head_dim(target.model_dir)
        used.add(chosen)
        outputs.append(produce[chosen](target, settings, texts, {}))
    return ensemble.labels, ensemble.combine(outputs).tolist(), "+".join(sorted(used))


def _start_all(servers: dict) -> None:
    """Start the members' servers at once; as soon as one cannot start, stop them all and raise a one-line
    ``ServeError`` naming it."""
    failures: dict[str, str] = {}

    def start(name, server):
        try:
            server.start()
        except ServeError as error:
            failures.setdefault(name, str(error))

    threads = [threading.Thread(target=start, args=item, daemon=True) for item in servers.items()]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads) and not failures:
            time.sleep(0.2)  # a short sleep lets Ctrl-C through
    finally:
        if failures or any(thread.is_alive() for thread in threads):
            for server in servers.values():  # the servers still starting see their process end and give up
                server.stop()
            for thread in threads:
                thread.join()
            for server in servers.values():  # one that had not started its process yet when stopped
                server.stop()
    if failures:
        name, message = next(iter(failures.items()))  # the first to fail, not those stopped after it
        raise ServeError(f"ensemble member {name} could not start, so the ensemble stops: {message}")


class EnsembleServer:
    """The ensemble behind one endpoint: the members' vLLM servers and the front that combines their answers. It
    has the interface of :class:`~tessera.serving.launcher.VllmServer` (``start``, ``url``, ``models``, ``wait``,
    ``stop``)."""

    def __init__(self, ensemble: Ensemble, settings, verbose: bool = False, echo=print):
        from tessera.serving.launcher import VllmServer

        self.ensemble, self.settings, self.echo = ensemble, settings, echo
        self.name = settings.name or f"{ensemble.description['method']}-ensemble"
        private = dataclasses.replace(settings, host="127.0.0.1", port=0, log_requests=False, monitor=False)
        self.servers = {
            name: VllmServer(target, private, verbose=verbose, echo=echo) for name, target in ensemble.targets().items()
        }
        self.front: ThreadingHTTPServer | None = None
        self.count = 0

    @property
    def url(self) -> str:
        """The front's base URL (loopback when it listens on every address)."""
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{host}:{self.front.server_address[1]}"

    def start(self) -> None:
        """Start every member (at once) and then the front; a one-line ``ServeError`` when a member cannot start."""
        from tessera.serving.launcher import free_port

        port = free_port(self.settings.host, self.settings.port)
        _start_all(self.servers)
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        front = type("EnsembleFront", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.front = front((self.settings.host, port), _handler(self))
        threading.Thread(target=self.front.serve_forever, name="ensemble-front", daemon=True).start()

    def models(self) -> list[str]:
        """The served model name."""
        return [self.name]

    def wait(self) -> int:
        """Block until a member's server exits; its exit status."""
        while True:
            for server in self.servers.values():
                if server.process.poll() is not None:
                    return server.process.returncode
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the front and every member's server (their whole process groups)."""
        if self.front is not None:
            self.front.shutdown()
            self.front.server_close()
            self.front = None
        for server in self.servers.values():
            server.stop()

    def classify(self, request: dict) -> tuple[int, dict]:
        """Answer a ``/classify`` request: ``(status, body)`` in vLLM's shapes."""
        wanted = request.get("model")
        if wanted is not None and wanted != self.name:
            return 404, _error(f"The model `{wanted}` does not exist.", "NotFoundError", 404)
        with_members = bool(request.pop("members", False))
        answers = {}
        with ThreadPoolExecutor(len(self.servers)) as pool:
            futures = {
                name: pool.submit(self._forward, server, {**request, "model": name})
                for name, server in self.servers.items()
            }
            answers = {name: future.result() for name, future in futures.items()}
        for status, body in answers.values():
            if status != 200:
                return status, body
        probabilities = [[item["probs"] for item in answers[n][1]["data"]] for n in self.ensemble.member_names]
        combined = self.ensemble.combine(probabilities)
        labels = self.ensemble.labels
        data = []
        for index, row in enumerate(combined.tolist()):
            item = {"index": index, "label": labels[max(range(len(row)), key=row.__getitem__)], "probs": row}
            item["num_classes"] = len(row)
            if with_members:
                item["members"] = {n: p[index] for n, p in zip(self.ensemble.member_names, probabilities)}
            data.append(item)
        tokens = sum(body["usage"]["prompt_tokens"] for _, body in answers.values())
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
        body = {"id": f"classify-{time.time_ns():x}", "object": "list", "created": int(time.time())}
        return 200, {**body, "model": self.name, "data": data, "usage": usage}

    def _forward(self, server, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{server.url}/classify", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        if self.settings.api_key:
            request.add_header("Authorization", f"Bearer {self.settings.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=600) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def authorized(self, header: str) -> bool:
        """Whether an ``Authorization`` header carries the API key (always, when there is none)."""
        if not self.settings.api_key:
            return True
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(self.settings.api_key.encode()).digest()
        return scheme.lower() == "bearer" and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), digest)

    def log(self, method: str, route: str, status: int, seconds: float) -> None:
        """One line per request on the output, as vLLM's middleware writes for one model."""
        self.count += 1
        if self.settings.log_requests:
            stamp = time.strftime("%H:%M:%S")
            self.echo(f"{stamp} {method} {route} {status} {seconds * 1000:.1f} ms (request {self.count})")


def _error(message: str, kind: str, code: int) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _handler(ensemble: EnsembleServer):
    """The request handler class of the front."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            started = time.perf_counter()
            if self.path == "/health":
                alive = all(s.process.poll() is None for s in ensemble.servers.values())
                return self._send(200 if alive else 503, {})
            if not ensemble.authorized(self.headers.get("Authorization", "")):
                return self._answer(started, 401, {"error": "Unauthorized: send Authorization: Bearer <api key>"})
            if self.path == "/v1/models":
                model = {"id": ensemble.name, "object": "model", "owned_by": "tessera"}
                return self._answer(started, 200, {"object": "list", "data": [model]})
            self._answer(started, 404, _error(f"{self.path} is not served: POST /classify", "NotFoundError", 404))

        def do_POST(self):
            started = time.perf_counter()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not ensemble.authorized(self.headers.get("Authorization", "")):
                return self._answer(started, 401, {"error": "Unauthorized: send Authorization: Bearer <api key>"})
            if self.path != "/classify":
                return self._answer(
                    started, 404, _error(f"{self.path} is not served: POST /classify", "NotFoundError", 404)
                )
            try:
                request = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                return self._answer(started, 400, _error(f"invalid JSON: {error}", "BadRequestError", 400))
            if not isinstance(request, dict):
                return self._answer(started, 400, _error("the body must be a JSON object", "BadRequestError", 400))
            self._answer(started, *ensemble.classify(request))

        def _answer(self, started: float, status: int, payload: dict):
            self._send(status, payload)
            ensemble.log(self.command, self.path, status, time.perf_counter() - started)

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # the front logs requests itself (EnsembleServer.log)
            pass

    return Handler
