"""``tessera registry``: add / list / show / promote registered models, and back the registry up, verify and restore.

Every verb takes ``--db URL`` (``$TESSERA_REGISTRY_URL``) and ``--store DIR`` (``$TESSERA_REGISTRY_STORE``). Errors
are one line and exit status 2; ``verify`` exits 1 when it finds a problem and ``promote --if-better`` exits 1 when it
keeps the current version.
"""

from __future__ import annotations

import argparse
import json
import sys

from tessera.core.errors import ConfigError
from tessera.registry.database import STORE_ENV, URL_ENV


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``ConfigError`` (one line, exit status 2 through the CLI)."""

    def error(self, message):
        raise ConfigError(f"{message}: see tessera registry --help")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", help=f"the registry database URL or SQLite file (default ${URL_ENV}, else the tessera home)"
    )
    common.add_argument(
        "--store", help=f"where registered exports are kept (default ${STORE_ENV}, else beside the database)"
    )
    parser = _Parser(prog="tessera registry", description="A model registry with backups.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    add = verbs.add_parser("add", parents=[common], help="register a complete run's export as the next version of NAME")
    add.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (a multi-stage job: its last stage)")
    add.add_argument("--name", required=True, help="the model name (letters, digits, '_', '.', '-')")
    add.add_argument("--job-stage", help="the stage of a multi-stage job to register (default its last)")
    listing = verbs.add_parser("list", parents=[common], help="list registered versions")
    listing.add_argument("name", nargs="?", metavar="NAME", help="only this model")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = verbs.add_parser("show", parents=[common], help="one model's versions, or one version in full")
    show.add_argument("reference", metavar="NAME[@VERSION|@STAGE]")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    promote = verbs.add_parser("promote", parents=[common], help="point a stage (production...) at a version")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION", help="a version number, latest, or another stage")
    promote.add_argument("--stage", required=True, help="the stage: production, staging... (a word)")
    promote.add_argument(
        "--if-better", action="store_true", help="only if its test metric is not worse than the stage's current version"
    )
    promote.add_argument(
        "--metric", help="the test metric --if-better compares (default accuracy, macro_f1, perplexity or loss)"
    )
    backup = verbs.add_parser("backup", parents=[common], help="copy the database and every export to DEST, verified")
    backup.add_argument(
        "dest", metavar="DEST", help="a new or empty directory, or an earlier backup (replaced when done)"
    )
    restore = verbs.add_parser("restore", parents=[common], help="bring the registry back from a backup")
    restore.add_argument("src", metavar="SRC", help="a backup directory")
    restore.add_argument(
        "--force", action="store_true", help="restore even if the registry has versions the backup lacks"
    )
    verify = verbs.add_parser("verify", parents=[common], help="check every file's sha256 (the registry, or a backup)")
    verify.add_argument("backup", nargs="?", metavar="BACKUP", help="a backup directory (default: the live registry)")
    return parser


def _metric(metrics: dict) -> str:
    from tessera.registry.store import DEFAULT_METRICS

    key = next((k for k in DEFAULT_METRICS if isinstance(metrics.get(k), (int, float))), None)
    return f"{key} {metrics[key]:.4f}" if key else "-"


def _jsonable(row: dict) -> dict:
    out = {k: (str(v) if k == "directory" else v) for k, v in row.items() if k != "id"}
    if "files" in out:
        out["files"] = {path: {"sha256": sha, "size": size} for path, (sha, size) in out["files"].items()}
    return out


def _list(registry, name: str | None, as_json: bool) -> int:
    rows = registry.versions(name)
    if as_json:
        print(json.dumps([_jsonable(row) for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no models registered in {registry.url}: tessera registry add RUN_DIR --name NAME")
        return 0
    table = [
        (r["name"], str(r["version"]), ",".join(r["stages"]) or "-", r["created"], r["kind"], _metric(r["metrics"]))
        for r in rows
    ]
    header = ("name", "version", "stages", "created", "kind", "test")
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


def _show(registry, reference: str, as_json: bool) -> int:
    from tessera.registry.store import parse_reference

    name, selector = parse_reference(reference)
    if "@" not in reference:
        rows = registry.versions(name)
        if not rows:
            registry.number(name)  # the one-line error naming what exists
        history = registry.version(name, rows[-1]["version"])["history"]
        if as_json:
            print(json.dumps({"versions": [_jsonable(r) for r in rows], "history": history}, indent=2))
            return 0
        for row in rows:
            stages = f" ({', '.join(row['stages'])})" if row["stages"] else ""
            print(
                f"{name} version {row['version']}{stages}: {row['created']}, {_metric(row['metrics'])}, {row['source']}"
            )
        for event in history:
            was = f" (was {event['previous']})" if event["previous"] is not None else ""
            note = f": {event['note']}" if event["note"] else ""
            print(f"  {event['at']} {event['stage']} -> version {event['version']}{was}{note}")
        return 0
    row = registry.get(reference)
    if as_json:
        print(json.dumps(_jsonable(row), indent=2))
        return 0
    stages = f" ({', '.join(row['stages'])})" if row["stages"] else ""
    composition = " ".join(f"{family}={','.join(names)}" for family, names in row["composition"].items())
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items() if isinstance(v, float))
    lineage = row["lineage"]
    print(f"{row['name']} version {row['version']}{stages}")
    print(f"  created      {row['created']}")
    print(f"  source       {row['source']}")
    print(f"  kind         {row['kind']}")
    print(
        f"  stored       {row['directory']} ({len(row['files'])} files, {row['size'] / 1e6:.1f} MB, sha256 {row['digest'][:16]})"
    )
    print(f"  composition  {composition or '-'}")
    print(
        f"  data         {row['data_hash'] or 'unknown (a data file was not found when it was registered)'} ({row['data']['settings'].get('name')})"
    )
    print(f"  test         {metrics or '-'}")
    print(f"  base model   {lineage.get('base_model')}")
    if lineage.get("base_version"):
        print(f"  fine-tuned from {lineage['base_version']['name']} version {lineage['base_version']['version']}")
    if lineage.get("job"):
        job = lineage["job"]
        print(
            f"  job          {job['dir']}: stage {job['stage']} of {', '.join(job['stages'])} (from {' <- '.join(job['init_chain'])})"
        )
    if lineage.get("ensemble"):
        members = ", ".join(f"{n} ({m['path']})" for n, m in lineage["ensemble"]["members"].items())
        print(f"  ensemble     {lineage['ensemble']['method']} of {members}")
    return 0


def main(argv: list[str]) -> int:
    """``tessera registry VERB ...``."""
    from tessera.registry.store import Registry

    args = _parser().parse_args(argv)
    registry = Registry(args.db, args.store)
    if args.verb == "add":
        row = registry.add(args.run_dir, args.name, args.job_stage)
        print(
            f"registered {row['name']} version {row['version']} ({len(row['files'])} files, {row['size'] / 1e6:.1f} MB, "
            f"{_metric(row['metrics'])}) in {row['directory']}"
        )
        return 0
    if args.verb == "list":
        return _list(registry, args.name, args.json)
    if args.verb == "show":
        return _show(registry, args.reference, args.json)
    if args.verb == "promote":
        number = registry.number(f"{args.name}@{args.version}")[1]
        promoted, message = registry.promote(args.name, number, args.stage, args.if_better, args.metric)
        print(message, file=sys.stdout if promoted else sys.stderr)
        return 0 if promoted else 1
    from tessera.registry import backup

    if args.verb == "backup":
        manifest = backup.backup(registry, args.dest)
        size = sum(entry["size"] for entry in manifest["files"].values())
        print(
            f"backed up {len(manifest['versions'])} versions ({len(manifest['files'])} files, {size / 1e6:.1f} MB) to {args.dest}"
        )
        return 0
    if args.verb == "restore":
        versions, copied = backup.restore(registry, args.src, args.force)
        files = f"{copied} file{'' if copied == 1 else 's'}"
        print(f"restored {versions} versions from {args.src} ({files} copied back, the database replaced)")
        return 0
    if args.backup:
        problems = backup.verify_backup(args.backup)
        where, whole = f"the backup {args.backup}", f"every file of the backup {args.backup} matches its sha256"
    else:
        count, problems = backup.verify_registry(registry)
        where, whole = "the registry", f"all {count} files of the registry match their sha256"
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"verify: {len(problems)} problem{'' if len(problems) == 1 else 's'} in {where}", file=sys.stderr)
        return 1
    print(f"verify: {whole}")
    return 0
