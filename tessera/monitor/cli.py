"""``tessera monitor RUN_DIR [--log FILE] [--out DIR] [KEY=VALUE...]``: compare a served-traffic log with the
export's drift reference; print the report, write plots and ``monitor_report.md``. Exit status 0 without drift, 1
with drift, 2 on bad input (one line)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tessera.core.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``ConfigError`` (one line, exit status 2 through the CLI)."""

    def error(self, message):
        raise ConfigError(f"{message}: see tessera monitor --help")


def main(argv: list[str]) -> int:
    from tessera.core.plugins import discover
    from tessera.monitor import MonitorError
    from tessera.monitor.drift import Thresholds
    from tessera.monitor.reference import DriftReference
    from tessera.monitor.report import build_report, summary_lines, write_report
    from tessera.monitor.traffic import read_records
    from tessera.registry import is_reference, resolve_reference
    from tessera.serving.monitoring import traffic_log_path
    from tessera.serving.settings import load_settings
    from tessera.serving.target import resolve, run_config

    parser = _Parser(prog="tessera monitor", description="Drift of served traffic against the export's reference.")
    parser.add_argument(
        "path",
        metavar="RUN_DIR",
        help="the served run directory (its export/, a model directory, or registry:NAME@STAGE)",
    )
    parser.add_argument("--log", type=Path, help="the served-traffic log (default: the one tessera serve wrote)")
    parser.add_argument("--out", type=Path, help="where plots and monitor_report.md go (default: the log's folder)")
    parser.add_argument(
        "settings", nargs="*", metavar="KEY=VALUE", help="drift thresholds (drift_psi=0.2, drift_window=200...)"
    )
    args = parser.parse_intermixed_args(argv)
    if is_reference(args.path):
        args.path = resolve_reference(args.path)
    settings = load_settings(run_config(args.path), args.settings)
    thresholds = Thresholds.from_settings(settings)
    target = resolve(args.path, discover())
    reference = DriftReference.load(target.model_dir)
    log = args.log or traffic_log_path(target, settings)
    if log is None:
        raise MonitorError(f"{args.path} is no run directory, so it has no default traffic log: pass --log FILE")
    records = read_records(log)
    if not records:
        raise MonitorError(f"{log} holds no served inputs yet: send /classify requests to tessera serve first")
    report = build_report(reference, records, thresholds)
    for line in summary_lines(report, reference, log):
        print(line)
    for path in write_report(report, reference, records, log, args.out or log.parent):
        print(f"wrote {path}")
    return 1 if report.drifted else 0
