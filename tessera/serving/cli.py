"""``tessera serve`` and ``tessera predict``: their arguments, and the serving loop that stops cleanly."""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager

from tessera.core.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``ConfigError`` (one line, exit status 2 through the CLI)."""

    def error(self, message):
        raise ConfigError(f"{message}: see tessera {self.prog.split()[-1]} --help")


def _overrides(args) -> list[str]:
    flags = {"host": args.host, "port": args.port, "api_key": args.api_key, "name": args.name}
    return [f"{key}={value}" for key, value in flags.items() if value is not None] + list(args.settings)


def _settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "settings",
        nargs="*",
        metavar="KEY=VALUE",
        help="serve settings (dtype=float32, max_num_seqs=16...; see docs/serving.md)",
    )


def _registered(args) -> None:
    """For a ``registry:NAME[@VERSION|@STAGE]`` argument: the registered version's directory (checked), served as
    NAME unless ``--name`` says otherwise."""
    from tessera.registry import is_reference, resolve_reference

    if is_reference(args.path):
        if hasattr(args, "name"):
            args.name = args.name or args.path.removeprefix("registry:").partition("@")[0]
        args.path = resolve_reference(args.path)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def _signals(handler):
    """Handle SIGINT and SIGTERM with ``handler`` while the block runs."""
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def serve(argv: list[str]) -> int:
    """``tessera serve RUN_DIR|MODEL_DIR [--host H] [--port P] [--api-key K] [KEY=VALUE...]``."""
    from tessera.core.plugins import discover
    from tessera.serving.ensemble import ROUTE as ENSEMBLE_ROUTE
    from tessera.serving.ensemble import Ensemble, EnsembleServer, ensemble_export
    from tessera.serving.launcher import VllmServer
    from tessera.serving.monitoring import monitor_environment
    from tessera.serving.settings import load_settings
    from tessera.serving.target import ROUTES, ServeError, resolve, run_config, vllm_refusal

    parser = _Parser(prog="tessera serve", description="Serve a run's export through vLLM's OpenAI-compatible API.")
    parser.add_argument(
        "path",
        help="a run directory (outputs/<date>/<time>), its export/, a model directory, or registry:NAME@STAGE",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", help="key clients must send as 'Authorization: Bearer KEY'")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own output")
    parser.add_argument("--name", help="the served model name")
    _settings_argument(parser)
    args = parser.parse_intermixed_args(argv)
    _registered(args)
    settings = load_settings(run_config(args.path), _overrides(args))
    echo = lambda line: print(line, flush=True)  # noqa: E731
    export = ensemble_export(args.path)
    if export is not None:
        ensemble = Ensemble.load(export, discover())
        names = ", ".join(ensemble.member_names)
        print(f"tessera serve: starting vLLM on the members of the ensemble {export} ({names})", flush=True)
        server, route = EnsembleServer(ensemble, settings, verbose=args.verbose, echo=echo), ENSEMBLE_ROUTE
    else:
        target = resolve(args.path, discover(), name=settings.name, merged=settings.merged)
        refusal = vllm_refusal(target.model_dir)
        if refusal:
            raise ServeError(refusal)
        print(f"tessera serve: starting vLLM on {target.model_dir} ({target.kind})", flush=True)
        for note in (*target.notes, *monitor_environment(target, settings)[1]):
            print(f"tessera serve: {note}", flush=True)
        server = VllmServer(target, settings, verbose=args.verbose, echo=echo)
        route = f"{ROUTES[target.kind]}; GET /metrics"
    try:
        with _signals(_interrupt):  # Ctrl-C and SIGTERM stop the server the same way
            server.start()
            print(
                f"tessera serve: ready at {server.url} models: {', '.join(server.models())} ({route}); Ctrl-C stops",
                flush=True,
            )
            status = server.wait()
        raise ServeError(f"vLLM stopped by itself (exit status {status}): run with --verbose to see why")
    except KeyboardInterrupt:
        print("tessera serve: stopping", flush=True)
    finally:
        with _signals(signal.SIG_IGN):  # a second Ctrl-C must not cut the clean-up short
            server.stop()
    print("tessera serve: stopped", flush=True)
    return 0


def predict(argv: list[str]) -> int:
    """``tessera predict MODEL_OR_RUN_DIR FILE [--output OUT] [--engine auto|vllm|transformers|onnxruntime] ...``."""
    from pathlib import Path

    from tessera.serving.predict import predict_file

    parser = _Parser(
        prog="tessera predict", description="Batch inference on a file (.txt, .csv, .jsonl) through vLLM's offline API."
    )
    parser.add_argument("path", help="a run directory, its export/, a model directory, or registry:NAME@STAGE")
    parser.add_argument("file", type=Path, help="inputs: .txt (one per line), .csv or .jsonl (a text column)")
    parser.add_argument("--output", type=Path, help="where to write (default: FILE's stem + .predictions.jsonl)")
    parser.add_argument("--text-column", default="text", help="the input column of a .csv / .jsonl file")
    parser.add_argument(
        "--engine",
        choices=("auto", "vllm", "transformers", "onnxruntime"),
        default="auto",
        help="auto: ONNX Runtime for an ONNX export; else vLLM when installed and it serves the export; else transformers",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per generation")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--chat", action="store_true", help="send each input as a user message (chat template)")
    _settings_argument(parser)
    args = parser.parse_intermixed_args(argv)
    _registered(args)
    try:
        with _signals(_interrupt):  # SIGTERM, like Ctrl-C, stops the vLLM subprocess and removes its files
            output, engine, count = predict_file(
                args.path,
                args.file,
                output=args.output,
                text_column=args.text_column,
                engine=args.engine,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                chat=args.chat,
                overrides=args.settings,
            )
    except KeyboardInterrupt:
        print("tessera predict: interrupted, nothing written", file=sys.stderr)
        return 130
    print(f"tessera predict: {count} predictions ({engine}) written to {output}", file=sys.stderr)
    return 0
