"""``tessera federate [--superlink HOST:PORT ...] [train overrides...]``: a federated stage on a real Flower
deployment, the ServerApp and ClientApp of :mod:`tessera.federated.app`.

The overrides compose and are checked as ``tessera train``'s (one line ``error: ...`` before any process starts);
the config must select an aggregator and have no ``stages``. The fully resolved config (YAML) and the run
directory (``hydra.run.dir``, else ``outputs/<date>/<time>``) go into the Flower app's run config: a directory
with a ``pyproject.toml`` whose ``[tool.flwr.app.components]`` name tessera's ServerApp and ClientApp, written
under a temporary directory with the connection config (``$FLWR_HOME/config.toml``) of the CLI. Then
``flwr run APP tessera --stream`` submits the run and streams its log; the Flower run's final status and the run
directory's ``run.json`` decide the outcome.

Without ``--superlink`` a local deployment is started on 127.0.0.1 (insecure, loopback only, free ports): a
SuperLink and ``federated.clients`` SuperNodes, node ``i`` with ``--node-config "partition-id=i
num-partitions=N"``, each a subprocess in its own process group with its own ``FLWR_HOME``; their logs are copied
into ``<run>/flower/``. Every process is stopped when the run ends, fails, a SuperNode dies or the user presses
Ctrl-C; a run directory left ``running`` is marked ``failed`` (or ``interrupted``), never left to look complete.

With ``--superlink HOST:PORT`` (the Control API of a running SuperLink, 9093 by default) the run is submitted
there, with TLS (``--root-certificates CA.pem``; without it, the system's roots) or ``--insecure``; a SuperLink that
cannot be reached within ``--connect-timeout`` seconds is refused with one line.
"""

from __future__ import annotations

import argparse
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
from datetime import datetime
from pathlib import Path

from tessera.core.errors import ConfigError, TesseraError
from tessera.core.job import sigterm_interrupts

#: The connection name in the CLI's ``config.toml`` and the app's name.
CONNECTION, APP_NAME = "tessera", "tessera-federation"
#: Seconds a local SuperLink gets to open its ports, and a stopped process to exit before it is killed.
STARTUP_TIMEOUT, STOP_TIMEOUT = 60.0, 10.0


class DeploymentError(TesseraError):
    """A Flower deployment that failed: a process that died, a run that did not complete."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``ConfigError`` (one line, exit status 2 through the CLI)."""

    def error(self, message):
        raise ConfigError(f"{message}: see tessera federate --help")


def parser() -> argparse.ArgumentParser:
    found = _Parser(
        prog="tessera federate",
        description="Run a federated stage (aggregator=NAME) on a Flower deployment: a local one on 127.0.0.1 "
        "(a SuperLink and federated.clients SuperNodes), or an existing SuperLink (--superlink). The other "
        "arguments are tessera train overrides.",
    )
    found.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="the Control API of a running SuperLink (flower-superlink --control-api-address, 9093 by default); "
        "without it a local deployment is started",
    )
    found.add_argument(
        "--root-certificates", metavar="CA.pem", type=Path, help="TLS: the CA certificate the SuperLink's is signed by"
    )
    found.add_argument("--insecure", action="store_true", help="connect to --superlink without TLS")
    found.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to reach the SuperLink (10)"
    )
    return found


# --- the app directory and the connection ----------------------------------------------------------------------


def app_pyproject(config_yaml: str, run_dir: str) -> str:
    """The ``pyproject.toml`` of the Flower app: tessera's components and the run config."""
    import tomli_w

    from tessera.federated.app import CONFIG_KEY, RUN_DIR_KEY

    return tomli_w.dumps(
        {
            "project": {
                "name": APP_NAME,
                "version": "1.0.0",
                "description": "A tessera federated stage (written by tessera federate)",
                "license": "Apache-2.0",
                "dependencies": [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "tessera",
                        "components": {
                            "serverapp": "tessera.federated.app:serverapp",
                            "clientapp": "tessera.federated.app:clientapp",
                        },
                        "config": {CONFIG_KEY: config_yaml, RUN_DIR_KEY: run_dir},
                    }
                }
            },
        }
    )


def connection_toml(address: str, insecure: bool, root_certificates: Path | None) -> str:
    """The Flower CLI's ``config.toml`` with one SuperLink connection, the default."""
    import tomli_w

    entry: dict = {"address": address}
    if insecure:
        entry["insecure"] = True
    if root_certificates is not None:
        entry["root-certificates"] = str(root_certificates.resolve())
    return tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: entry}})


def check_address(address: str) -> str:
    """``HOST:PORT`` or one line saying what is wrong."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink {address}: give HOST:PORT, the SuperLink's Control API (port 9093 by default)")
    return address


def probe(address: str, insecure: bool, root_certificates: bytes | None, timeout: float) -> None:
    """Raise ``DeploymentError`` unless a gRPC channel to ``address`` is ready within ``timeout`` seconds."""
    import grpc

    if insecure:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_certificates))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        tls = "without TLS (--insecure)" if insecure else "with TLS (check --root-certificates, or --insecure)"
        raise DeploymentError(
            f"cannot reach the SuperLink's Control API at {address} {tls} within {timeout:g} s: check the address "
            "and port (flower-superlink --control-api-address, 9093 by default) and that the SuperLink is running"
        ) from None
    finally:
        channel.close()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            found = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            found.bind(("127.0.0.1", 0))
            sockets.append(found)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for found in sockets:
            found.close()


# --- processes -------------------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (Flower's ``flwr``, ``flower-superlink``...)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _environment(flwr_home: Path) -> dict:
    """The environment of a Flower process: this one's, with its own ``FLWR_HOME``, no telemetry or update check,
    and this interpreter's scripts first on ``PATH`` (the SuperLink and SuperNodes start ``flower-superexec``)."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


class Process:
    """A Flower process started in its own process group, its output in ``log``."""

    def __init__(self, name: str, command: list[str], flwr_home: Path, log: Path):
        flwr_home.mkdir(parents=True, exist_ok=True)
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_environment(flwr_home),
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return self.popen.poll()

    def last_error(self) -> str | None:
        """The last line of the process's log that reports an error, without colour codes (None: none does)."""
        return last_error(self.log.read_text(errors="replace").splitlines())

    def stop(self) -> None:
        """SIGTERM to the process group (the process and what it started), SIGKILL after :data:`STOP_TIMEOUT`."""
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.popen.pid, signal.SIGKILL)  # children left in the group (a ServerApp, a ClientApp)
        self.popen.wait()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def last_error(lines: list[str]) -> str | None:
    """The last of ``lines`` that reports an error (colour codes removed, at most 300 characters), or None."""
    found = [_ANSI.sub("", line).strip() for line in lines]
    errors = [line for line in found if re.search(r"error|exception|refused|failed|traceback", line, re.IGNORECASE)]
    return errors[-1][:300] if errors else None


def exit_status(code: int) -> str:
    """A process's exit status in words."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class LocalDeployment:
    """A SuperLink and ``clients`` SuperNodes on 127.0.0.1, insecure, under ``workdir``."""

    def __init__(self, workdir: Path, clients: int):
        self.workdir, self.clients = workdir, clients
        self.superlink: Process | None = None
        self.nodes: list[Process] = []

    def start(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Start the SuperLink, wait for its Control API, start the SuperNodes; return the Control API address."""
        fleet, serverappio, control, *clientappio = free_ports(3 + self.clients)
        self.superlink = Process(
            "SuperLink",
            [
                _bin("flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                f"--fleet-api-address=127.0.0.1:{fleet}",
                f"--serverappio-api-address=127.0.0.1:{serverappio}",
                f"--control-api-address=127.0.0.1:{control}",
            ],
            self.workdir / "superlink",
            self.workdir / "superlink.log",
        )
        address = f"127.0.0.1:{control}"
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                probe(address, True, None, min(1.0, max(0.1, deadline - time.monotonic())))
                break
            except DeploymentError:
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the local SuperLink did not open its Control API at {address} within {timeout:g} s "
                        f"({self.superlink.last_error() or 'no error in its log'})"
                    ) from None
        for partition, port in enumerate(clientappio):
            self.nodes.append(
                Process(
                    f"SuperNode {partition} (partition-id={partition})",
                    [
                        _bin("flower-supernode"),
                        "--insecure",
                        f"--superlink=127.0.0.1:{fleet}",
                        f"--clientappio-api-address=127.0.0.1:{port}",
                        "--node-config",
                        f"partition-id={partition} num-partitions={self.clients}",
                    ],
                    self.workdir / f"supernode-{partition}",
                    self.workdir / f"supernode-{partition}.log",
                )
            )
        return address

    def processes(self) -> list[Process]:
        return [p for p in (self.superlink, *self.nodes) if p is not None]

    def check(self) -> None:
        """Raise ``DeploymentError`` naming the first Flower process that exited."""
        for process in self.processes():
            code = process.exited()
            if code is not None:
                said = process.last_error()
                raise DeploymentError(
                    f"the {process.name} {exit_status(code)}{f' ({said})' if said else ''}: the federation was "
                    "stopped; its log is in the run directory's flower/"
                )

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()

    def keep_logs(self, run_dir: Path) -> None:
        """Copy the processes' logs into ``run_dir/flower/``."""
        if not run_dir.is_dir():
            return
        target = run_dir / "flower"
        target.mkdir(exist_ok=True)
        for process in self.processes():
            if process.log.is_file():
                shutil.copy(process.log, target / process.log.name)


# --- the flwr CLI ----------------------------------------------------------------------------------------------


class FlowerRun:
    """``flwr run APP tessera --stream`` in its own process group: its output echoed to stderr, the Flower run id
    read from it."""

    def __init__(self, app_dir: Path, flwr_home: Path):
        self.flwr_home = flwr_home
        self.run_id: int | None = None
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_environment(flwr_home),
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            print(line, end="", file=sys.stderr, flush=True)
            found = re.search(r"started run (\d+)", line)
            if found and self.run_id is None:
                self.run_id = int(found.group(1))

    def wait(self, check=None, poll: float = 0.5) -> int:
        """Wait for ``flwr run`` to exit, calling ``check()`` meanwhile (it raises to stop); return its status."""
        while self.popen.poll() is None:
            if check is not None:
                check()
            time.sleep(poll)
        self.reader.join(5)
        return self.popen.returncode

    def stop(self) -> None:
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def flower_status(self) -> tuple[str, str]:
        """``(status, details)`` of the Flower run (``finished:completed``...) from ``flwr ls``; empty if unknown."""
        if self.run_id is None:
            return "", ""
        try:
            done = subprocess.run(
                [_bin("flwr"), "ls", CONNECTION, "--run-id", str(self.run_id), "--format", "json"],
                capture_output=True,
                text=True,
                env=_environment(self.flwr_home),
                timeout=60,
            )
            runs = json.loads(done.stdout[done.stdout.index("{") :]).get("runs", [])
        except (subprocess.TimeoutExpired, ValueError):
            return "", ""
        return (runs[0].get("status", ""), runs[0].get("status-details", "")) if runs else ("", "")

    def cancel(self) -> None:
        """``flwr stop RUN_ID``: stop the Flower run on the SuperLink (a remote one keeps running otherwise)."""
        if self.run_id is not None:
            subprocess.run(
                [_bin("flwr"), "stop", str(self.run_id), CONNECTION],
                capture_output=True,
                env=_environment(self.flwr_home),
                timeout=60,
            )

    def last_error(self) -> str:
        """The last error ``flwr run`` printed (or its last line)."""
        lines = [_ANSI.sub("", line).strip() for line in self.lines if line.strip()]
        return last_error(self.lines) or (lines[-1][:300] if lines else "flwr run printed nothing")


# --- the verb --------------------------------------------------------------------------------------------------


def compose(overrides: list[str]):
    """Validate ``overrides`` as ``tessera train`` does, and return ``(config, run directory text)``."""
    from tessera.core.cli import _warn, compose_config, prepare_hydra, validate
    from tessera.core.plugins import discover

    if {"-m", "--multirun"}.intersection(overrides):
        raise ConfigError("tessera federate runs one federated stage: a sweep (-m) is not supported")
    given = [o for o in overrides if o.startswith("hydra.run.dir=")]
    others = [o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if len(others) > len(given):
        raise ConfigError("tessera federate takes hydra.run.dir=DIR, no other hydra.* override")
    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    plugins = discover()
    _warn(plugins)
    plugins.check_strict()
    prepare_hydra(plugins)
    validate(job_overrides, plugins)
    cfg = compose_config(job_overrides, plugins)
    if cfg.stages:
        raise ConfigError("tessera federate runs one federated stage: this config has stages (choose one of them)")
    if not cfg.aggregator:
        raise ConfigError("tessera federate needs an aggregator: add aggregator=fedavg (or another aggregator)")
    if cfg.federated.dropout:
        raise ConfigError(
            f"federated.dropout={cfg.federated.dropout} simulates faults on the in-process grid only: on a deployment "
            "the faults are real; drop it (federated.min_clients says how many replies a round needs)"
        )
    if cfg.federated.attack == "alie":
        raise ConfigError(
            "federated.attack=alie computes its vector from every attacker's partition, which only the in-process "
            "grid holds: run it with tessera train, or choose sign_flip, gaussian or label_flip"
        )
    now = datetime.now()
    run_dir = given[-1].split("=", 1)[1] if given else f"outputs/{now:%Y-%m-%d}/{now:%H-%M-%S}"
    return cfg, run_dir


def finish(run_dir: Path, error: BaseException) -> None:
    """Mark a run directory that a stopped deployment left ``running`` (or without ``run.json``) as ended by
    ``error``: ``failed`` with its line, or ``interrupted``."""
    from tessera.core.pipeline import ended, status, write_status

    found = status(run_dir)
    if not run_dir.is_dir() or found.get("status") == "complete":
        return
    recorded = found.get("status") in ("failed", "interrupted") and not found.get("error", "").startswith("SystemExit")
    if recorded and not isinstance(error, KeyboardInterrupt):
        return  # the stage wrote how it ended
    state, details = ended(error, run_dir)
    write_status(run_dir, state, **{k: v for k, v in found.items() if k == "composition"}, **details)


def main(argv: list[str]) -> int:
    """``tessera federate [options] [overrides]``: run the federation, print the run directory."""
    from omegaconf import OmegaConf

    from tessera.core.pipeline import status

    args, overrides = parser().parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        raise ConfigError(f"unrecognized option {unknown[0]}: see tessera federate --help")
    if args.superlink is None and (args.insecure or args.root_certificates):
        raise ConfigError(
            "--insecure and --root-certificates go with --superlink HOST:PORT (a local deployment is insecure, "
            "on 127.0.0.1 only)"
        )
    if args.insecure and args.root_certificates:
        raise ConfigError("--insecure and --root-certificates exclude each other: TLS needs the certificate")
    if args.root_certificates is not None and not args.root_certificates.is_file():
        raise ConfigError(f"--root-certificates {args.root_certificates}: no such file")
    if args.superlink is not None:
        check_address(args.superlink)
    local = args.superlink is None
    if not local:  # first: an unreachable SuperLink is refused in a second, before the config is composed
        certificates = args.root_certificates.read_bytes() if args.root_certificates else None
        probe(args.superlink, args.insecure, certificates, args.connect_timeout)
    cfg, run_dir_text = compose(overrides)
    run_dir = Path(run_dir_text).expanduser()
    if local:
        run_dir = run_dir.absolute()
        run_dir_text = str(run_dir)
    clients = cfg.federated.clients
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    workdir = Path(tempfile.mkdtemp(prefix="tessera-federate-"))
    deployment = LocalDeployment(workdir, clients) if local else None
    flower = None
    try:
        with sigterm_interrupts():
            try:
                app_dir = workdir / "app"
                app_dir.mkdir()
                (app_dir / "pyproject.toml").write_text(app_pyproject(config_yaml, run_dir_text), encoding="utf-8")
                if local:
                    print(f"tessera federate: a SuperLink and {clients} SuperNodes on 127.0.0.1", file=sys.stderr)
                    address, insecure, roots = deployment.start(), True, None
                else:
                    address, insecure, roots = args.superlink, args.insecure, args.root_certificates
                cli_home = workdir / "cli"
                cli_home.mkdir()
                (cli_home / "config.toml").write_text(connection_toml(address, insecure, roots), encoding="utf-8")
                flower = FlowerRun(app_dir, cli_home)
                code = flower.wait(deployment.check if local else None)
            except BaseException as error:
                if flower is not None:
                    flower.stop()
                    if not local:
                        flower.cancel()
                if deployment is not None:
                    deployment.stop()
                if local:
                    finish(run_dir, error)
                raise
        state, details = flower.flower_status()
        if deployment is not None:
            deployment.stop()
        if local:
            found = status(run_dir).get("status")
            if found != "complete":
                reason = details or status(run_dir).get("error") or flower.last_error()
                finish(run_dir, DeploymentError(reason))
                raise DeploymentError(
                    f"the federation did not complete (Flower: {state or 'unknown'}; {reason}); see {run_dir}"
                )
        elif code != 0 or state != "finished:completed":
            raise DeploymentError(
                f"the federation did not complete (Flower run {flower.run_id}: {state or 'unknown'}; "
                f"{details or flower.last_error()})"
            )
    except KeyboardInterrupt:
        print(f"tessera federate: interrupted; every Flower process was stopped ({run_dir})", file=sys.stderr)
        return 130
    finally:
        if deployment is not None:
            deployment.keep_logs(run_dir)
        shutil.rmtree(workdir, ignore_errors=True)
    where = "" if local else " (on the SuperLink's machine)"
    print(f"tessera federate: complete: {run_dir}{where}")
    return 0
