"""``tessera ensemble METHOD DIR... [KEY=VALUE...]``: a one-stage ensemble job over run or export directories.

It is ``tessera train ensemble=METHOD ensemble.METHOD.members=[DIR,...] adapter=none KEY=VALUE...``, with the
``data`` and ``model`` config of the first member that is a run (its ``.hydra/config.yaml``, or a stage's
``config.yaml``), so that the ensemble is evaluated on the members' test split and a task vector starts from the
members' base. A ``data.*`` / ``model.*`` override (or ``data=`` / ``model=``) given on the command line wins over
the carried value. A Hydra sweep directory (``multirun/<date>/<time>``) stands for its numbered job directories, in
order. The run directory is ``tessera train``'s (``outputs/<date>/<time>``; ``hydra.run.dir=...`` accepted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tessera.core.errors import ConfigError

#: The config nodes an ensemble job takes from its first member run.
CARRIED_NODES = ("data", "model")


class _Parser(argparse.ArgumentParser):
    """Usage errors as ``ConfigError`` (one line, exit status 2 through the CLI)."""

    def error(self, message):
        raise ConfigError(f"{message}: see tessera ensemble --help")


def sweep_jobs(directory: Path) -> list[Path] | None:
    """The numbered job directories of a Hydra sweep directory, in numeric order; None when ``directory`` is not
    one (it has a ``multirun.yaml`` or numbered sub-directories, and no model or run of its own)."""
    if (directory / "config.json").is_file() or (directory / "export").is_dir() or (directory / "run.json").is_file():
        return None
    jobs = sorted(
        (child for child in directory.iterdir() if child.is_dir() and child.name.isdigit()), key=lambda c: int(c.name)
    )
    if not jobs or not ((directory / "multirun.yaml").is_file() or all((j / "run.json").is_file() for j in jobs)):
        return None
    return jobs


def expand_members(entries: list[str]) -> list[str]:
    """``entries`` with each sweep directory replaced by its job directories (absolute paths)."""
    members = []
    for entry in entries:
        path = Path(entry).expanduser()
        jobs = sweep_jobs(path) if path.is_dir() else None
        members += [str(p.resolve()) for p in jobs] if jobs else [str(path.resolve()) if path.exists() else entry]
    return members


def saved_config(member: str) -> Path | None:
    """The config a member run was trained with: ``<run>/.hydra/config.yaml`` or a stage's ``config.yaml`` (also
    for the run's ``export/``); None for a plain model directory."""
    path = Path(member)
    for run in (path, path.parent) if path.name == "export" else (path,):
        for candidate in (run / ".hydra" / "config.yaml", run / "config.yaml"):
            if candidate.is_file():
                return candidate
    return None


def literal(value) -> str:
    """``value`` written as a Hydra override value (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def carried_overrides(config: Path, overrides: list[str]) -> list[str]:
    """``data.KEY=VALUE`` / ``model.KEY=VALUE`` overrides reproducing ``config``'s nodes, except those the user
    sets (``overrides``)."""
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    given = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    carried = []
    for node in CARRIED_NODES:
        if node in given or node not in saved:
            continue
        for key, value in saved[node].items():
            if f"{node}.{key}" not in given and not any(g.startswith(f"{node}.{key}.") for g in given):
                carried.append(f"++{node}.{key}={literal(value)}")
    return carried


def ensemble_overrides(method: str, members: list[str], overrides: list[str]) -> list[str]:
    """The ``tessera train`` overrides of ``tessera ensemble METHOD MEMBERS... OVERRIDES...``."""
    config = next((c for c in map(saved_config, members) if c is not None), None)
    carried = carried_overrides(config, overrides) if config else []
    listed = ",".join(literal(m) for m in members)
    return [f"ensemble={method}", f"ensemble.{method}.members=[{listed}]", "adapter=none", *carried, *overrides]


def main(argv: list[str]) -> int:
    """``tessera ensemble METHOD DIR... [KEY=VALUE...]``: compose the job, check the members, run it."""
    from tessera.core.cli import train
    from tessera.core.plugins import discover

    parser = _Parser(
        prog="tessera ensemble",
        description="Combine trained runs or exported models into one ensemble run (a one-stage tessera train job).",
    )
    parser.add_argument("method", help="an ensembler (tessera plugins lists them): linear, average...")
    parser.add_argument(
        "items",
        nargs="+",
        metavar="DIR|KEY=VALUE",
        help="members: run directories, their export/, model directories or a Hydra sweep directory; then "
        "tessera train overrides (ensemble.METHOD.weights=[...], hydra.run.dir=...)",
    )
    args = parser.parse_args(argv)
    overrides = [item for item in args.items if "=" in item]
    members = expand_members([item for item in args.items if "=" not in item])
    methods = discover().registry.names("ensemble")
    if args.method not in methods:
        raise ConfigError(f"unknown ensemble method '{args.method}': choose one of {', '.join(methods)}")
    if not members:
        raise ConfigError("tessera ensemble needs member directories: tessera ensemble METHOD DIR DIR [KEY=VALUE...]")
    command = ensemble_overrides(args.method, members, overrides)
    print(f"tessera ensemble: {args.method} of {len(members)} members: {' '.join(members)}", file=sys.stderr)
    return train(command)
