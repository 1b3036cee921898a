"""What ``tessera registry add`` reads from a run directory: the stage whose export it registers, checked complete,
with its composition, test metrics, data hash and lineage.

A run directory (``outputs/<date>/<time>``) registers its ``export/``; a multi-stage job registers its last stage (or
the one ``--stage`` names) from ``stages/<name>/``; a stage directory registers itself. The lineage names the run,
the job's stages and the ``init`` chain the registered stage descends from, an ensemble's members (path and test
metrics), and the base model (``model.pretrained``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tessera.registry.database import RegistryError

#: The files of a stage directory kept beside its export (the export with its config serves like the run).
KEPT_FILES = ("config.yaml", "run.json", "metrics.json", "report.md")


@dataclass
class Source:
    """A complete stage of a run, ready to register."""

    #: The directory whose ``export/`` is registered (the run, or a stage of a job).
    stage_dir: Path
    #: The stage's config file (``.hydra/config.yaml`` of a run, ``config.yaml`` of a stage).
    config_file: Path
    cfg: object
    status: dict
    metrics: dict
    lineage: dict

    @property
    def export(self) -> Path:
        """The export directory."""
        return self.stage_dir / "export"

    @property
    def kept(self) -> dict[str, Path]:
        """The files copied beside the export: ``{name in the registry: file}``."""
        files = {"config.yaml": self.config_file}
        files.update({name: self.stage_dir / name for name in KEPT_FILES[1:] if (self.stage_dir / name).is_file()})
        return files

    @property
    def composition(self) -> dict:
        """``{family: [technique names]}`` from ``run.json``."""
        return self.status.get("composition") or {}

    @property
    def kind(self) -> str:
        """``ensemble`` for an output-space ensemble, else the model's architecture (``config.json``)."""
        from tessera.core.ensembling import ENSEMBLE_FILE

        if (self.export / ENSEMBLE_FILE).is_file():
            return "ensemble"
        config = _read_json(self.export / "config.json")
        return (config.get("architectures") or ["unknown"])[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RegistryError(f"cannot read {path} ({error}): register a run that tessera train completed") from None


def _config_file(directory: Path) -> Path | None:
    for candidate in (directory / ".hydra" / "config.yaml", directory / "config.yaml"):
        if candidate.is_file() and (directory / "run.json").is_file():
            return candidate
    return None


def read_source(run_dir: Path | str, stage: str | None = None) -> Source:
    """The stage of ``run_dir`` to register (``stage``: a job's stage by name; default its last); a
    :class:`RegistryError` when it is no run, not complete or has no export."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise RegistryError(f"{run_dir} does not exist: pass a run directory that tessera train wrote")
    config_file = _config_file(run_dir)
    if config_file is None:
        raise RegistryError(
            f"{run_dir} is not a run directory (no run.json and .hydra/config.yaml): pass the directory tessera train "
            "wrote (outputs/<date>/<time>)"
        )
    cfg = OmegaConf.load(config_file)
    job_stages = [entry.name for entry in cfg.get("stages") or []]
    job = None
    if job_stages:
        job = {"dir": str(run_dir), "status": _read_json(run_dir / "run.json").get("status")}
        chosen = stage or job_stages[-1]
        if chosen not in job_stages:
            raise RegistryError(f"{run_dir} has no stage {chosen!r}: choose one of {', '.join(job_stages)}")
        stage_dir = run_dir / "stages" / chosen
        config_file = stage_dir / "config.yaml"
        if not config_file.is_file():
            raise RegistryError(
                f"stage {chosen} of {run_dir} has not run (no {config_file.name}): finish the job first"
            )
        job["stages"] = {
            entry.name: {"init": entry.get("init", "base"), "status": _stage_status(run_dir / "stages" / entry.name)}
            for entry in cfg.stages
        }
        job["stage"] = chosen
        job["init_chain"] = _init_chain(cfg, chosen)
        cfg = OmegaConf.load(config_file)
    elif stage is not None:
        raise RegistryError(f"{run_dir} is a single run, not a multi-stage job: drop --stage")
    else:
        stage_dir = run_dir
    status = _read_json(stage_dir / "run.json")
    where = f"stage {job['stage']} of {run_dir}" if job else str(stage_dir)
    if status.get("status") != "complete":
        detail = status.get("error") or status.get("resume") or ""
        raise RegistryError(
            f"{where} is not complete (status: {status.get('status', 'unknown')}{'; ' + detail if detail else ''}): "
            "register a run that completed"
        )
    from tessera.core.ensembling import ENSEMBLE_FILE

    export = stage_dir / "export"
    if not ((export / "config.json").is_file() or (export / ENSEMBLE_FILE).is_file()):
        raise RegistryError(f"{where} has no export (no export/config.json): register a run that exported a model")
    metrics_file = stage_dir / "metrics.json"
    metrics = _read_json(metrics_file) if metrics_file.is_file() else {"test": status.get("test") or {}}
    lineage = {"run": str(run_dir), "base_model": str(cfg.model.pretrained)}
    if job:
        lineage["job"] = job
    members = (metrics.get("ensemble") or {}).get("members")
    if members:
        lineage["ensemble"] = {
            "method": metrics["ensemble"].get("method"),
            "members": {name: {"path": m.get("path"), "test": m.get("test")} for name, m in members.items()},
        }
    return Source(stage_dir, config_file, cfg, status, metrics, lineage)


def _stage_status(stage_dir: Path) -> str:
    status_file = stage_dir / "run.json"
    return _read_json(status_file).get("status", "unknown") if status_file.is_file() else "planned"


def _init_chain(cfg, stage: str) -> list[str]:
    """The stages ``stage``'s model descends from through ``init``, itself first, ending at ``base``."""
    entries = list(cfg.stages)
    names = [entry.name for entry in entries]
    chain, current = [stage], stage
    while True:
        position = names.index(current)
        init = entries[position].get("init", "base")
        if init == "previous":
            init = names[position - 1] if position else "base"
        chain.append(init)
        if init not in names:
            return chain
        current = init


def data_record(cfg) -> tuple[str | None, dict]:
    """``(data hash, record)`` of the data a stage trained and was tested on: the sha256 of each data file (a
    ``hf_disk`` directory: of each file in it) and the settings that cut the splits. The hash is None when a file is
    no longer there."""
    from tessera.core.assets.store import sha256
    from tessera.core.data import resolve_path
    from tessera.core.errors import TesseraError

    data = cfg.data
    files: dict[str, str | None] = {}
    for key in ("path", "validation_path", "test_path"):
        value = data.get(key)
        if not value:
            continue
        try:
            path = resolve_path(str(value))
        except TesseraError:
            files[key] = None
            continue
        if path.is_file():
            files[key] = sha256(path)
        elif path.is_dir():
            inner = {p.relative_to(path).as_posix(): sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}
            files[key] = hashlib.sha256(json.dumps(inner, sort_keys=True).encode()).hexdigest()
        else:
            files[key] = None
    settings = {
        key: data.get(key)
        for key in ("name", "format", "text_column", "label_column", "validation_fraction", "test_fraction")
        if key in data
    }
    settings.update(
        {key: data.get(key) for key in ("split_seed", "limit_train", "limit_eval", "max_length") if key in data}
    )
    settings["labels"] = list(data.get("labels") or [])
    record = {"files": {key: {"path": str(data.get(key)), "sha256": digest} for key, digest in files.items()}}
    record["settings"] = settings
    if any(digest is None for digest in files.values()):
        return None, record
    identity = json.dumps({"files": files, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest(), record
