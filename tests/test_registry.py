"""tessera registry on a real SQLite database and a real run: versions, stages, resolution of registry:NAME@STAGE,
backups that survive a corrupted file and a killed backup, and every bad input in one line with nothing lost."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO, load_json, plugins, tessera
from tessera.core.assets.store import sha256
from tessera.registry import Registry, RegistryError
from tessera.registry.backup import MANIFEST, backup, restore, verify_backup, verify_registry
from tessera.registry.source import data_record


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry of its own (database and store under tmp_path), also seen by subprocesses through the env."""
    monkeypatch.setenv("TESSERA_REGISTRY_URL", str(tmp_path / "registry" / "registry.db"))
    monkeypatch.delenv("TESSERA_REGISTRY_STORE", raising=False)
    found = Registry()
    yield found
    found.close()


@pytest.fixture
def cli(capsys):
    """Run the real ``tessera`` command line in this process: ``cli(*args)`` -> a result with ``returncode``,
    ``stdout`` and ``stderr`` (faster than a subprocess; the same parsing and one-line errors)."""
    from tessera.core.cli import main

    def run(*args: str):
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit:
            code = exit.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def one_line_error(result, message: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]
    return lines[0]


def copy_run(run, target):
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return target


def test_add_list_show_promote(smoke_run, registry, cli):
    first = registry.add(smoke_run, "sentiment")
    second = registry.add(smoke_run, "sentiment")
    other = registry.add(smoke_run, "topics")
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    export_files = {
        f"export/{p.relative_to(smoke_run / 'export').as_posix()}": p
        for p in (smoke_run / "export").rglob("*")
        if p.is_file()
    }
    assert set(export_files) | {"config.yaml", "run.json", "metrics.json", "report.md"} == set(first["files"])
    assert all(first["files"][name][0] == sha256(path) for name, path in export_files.items())
    assert first["directory"] == registry.store / "sentiment" / "1"
    status = load_json(smoke_run / "run.json")
    assert first["composition"] == status["composition"] and first["metrics"] == status["test"]
    assert first["data_hash"] == data_record(OmegaConf.load(smoke_run / ".hydra" / "config.yaml"))[0]
    assert len(first["data_hash"]) == 64 and first["data"]["settings"]["limit_train"] == 320
    assert first["lineage"] == {"run": str(smoke_run), "base_model": "asset:minilm"}

    assert [(r["name"], r["version"]) for r in registry.versions()] == [
        ("sentiment", 1),
        ("sentiment", 2),
        ("topics", 1),
    ]
    assert registry.promote("sentiment", 1, "production") == (True, "sentiment version 1 is now production")
    assert registry.get("sentiment@production")["version"] == 1
    assert registry.get("sentiment")["version"] == registry.get("sentiment@latest")["version"] == 2
    promoted, message = registry.promote("sentiment", 2, "production")
    assert promoted and message == "sentiment version 2 is now production (was version 1)"
    shown = registry.get("sentiment@production")
    assert shown["version"] == 2 and shown["stages"] == ["production"]
    assert [(h["version"], h["previous"]) for h in shown["history"]] == [(1, None), (2, 1)]

    listing = cli("registry", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [(r["name"], r["version"], r["stages"]) for r in json.loads(listing.stdout)] == [
        ("sentiment", 1, []),
        ("sentiment", 2, ["production"]),
        ("topics", 1, []),
    ]
    shown = cli("registry", "show", "sentiment@production")
    assert shown.returncode == 0 and "sentiment version 2 (production)" in shown.stdout
    assert "composition  objective=classification adapter=lora" in shown.stdout


def test_the_store_keeps_a_model_whose_run_is_deleted_and_serve_resolves_it(smoke_run, registry, tmp_path, cli):
    from tessera.serving.target import resolve

    run = copy_run(smoke_run, tmp_path / "run")
    registry.add(run, "sentiment")
    registry.promote("sentiment", 1, "production")
    shutil.rmtree(run)
    directory = registry.resolve("sentiment@production")
    target = resolve(directory, plugins())
    assert target.model_dir == directory / "export" and target.kind == "classify"
    assert target.truncation == 48  # the run's data.max_length travels with the registered export

    with socket.socket() as taken:  # the whole command line resolves the reference, then stops at the busy port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(tessera("serve", "registry:sentiment@production", "--port", str(port)), f"port {port}")
    one_line_error(cli("serve", "registry:sentiment@staging"), "no version of sentiment is in stage 'staging'")

    (directory / "export" / "config.json").unlink()
    with pytest.raises(RegistryError, match=r"version 1 is damaged in the store: .*export/config.json is missing"):
        registry.resolve("sentiment@production")


def test_a_job_registers_its_last_stage_with_its_lineage(smoke_run, registry, tmp_path):
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    config = OmegaConf.load(smoke_run / ".hydra" / "config.yaml")
    stages = [{"name": "dapt"}, {"name": "tune", "init": "previous"}, {"name": "student", "init": "dapt"}]
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.merge(config, {"stages": stages})))
    (job / "run.json").write_text('{"status": "failed", "stage": "student"}')
    for stage in ("dapt", "tune"):
        copy_run(smoke_run, job / "stages" / stage)
        shutil.copy(smoke_run / ".hydra" / "config.yaml", job / "stages" / stage / "config.yaml")
    with pytest.raises(RegistryError, match="stage student of .* has not run"):
        registry.add(job, "sentiment")
    row = registry.add(job, "sentiment", stage="tune")
    assert row["source"] == str(job / "stages" / "tune")
    assert row["lineage"]["job"]["init_chain"] == ["tune", "dapt", "base"]
    assert row["lineage"]["job"]["stages"]["student"] == {"init": "dapt", "status": "planned"}
    with pytest.raises(RegistryError, match="has no stage 'nope': choose one of dapt, tune, student"):
        registry.add(job, "sentiment", stage="nope")


def test_promote_if_better_and_fine_tuning_the_production_model(smoke_run, registry, tmp_path, cli):
    from tessera.core.cli import validate
    from tessera.core.models import pretrained_path

    registry.add(smoke_run, "sentiment")
    registry.promote("sentiment", 1, "production")
    worse = copy_run(smoke_run, tmp_path / "worse")
    for name in ("run.json", "metrics.json"):  # a run whose test accuracy is lower
        record = load_json(worse / name)
        record["test"]["accuracy"] -= 0.1
        (worse / name).write_text(json.dumps(record))
    config = OmegaConf.load(worse / ".hydra" / "config.yaml")  # fine-tuned from the production version
    config.model.pretrained, config.model.random_init = "registry:sentiment@production", False
    (worse / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    lineage = registry.add(worse, "sentiment")["lineage"]
    assert lineage["base_model"] == "registry:sentiment@production"
    assert lineage["base_version"] == {"name": "sentiment", "version": 1}
    refused = cli("registry", "promote", "sentiment", "2", "--stage", "production", "--if-better")
    assert refused.returncode == 1 and "not promoted: sentiment version 2 has test accuracy 0.3750" in refused.stderr
    assert registry.get("sentiment@production")["version"] == 1
    promoted, message = registry.promote("sentiment", 2, "production", if_better=True, metric="loss")
    assert promoted and message.endswith("test loss 0.6932 vs 0.6932")
    one_line_error(
        cli("registry", "promote", "sentiment", "1", "--stage", "production", "--if-better", "--metric", "bleu"),
        "sentiment version 1 has no test metric 'bleu'",
    )

    reference = "registry:sentiment@production"
    assert pretrained_path(OmegaConf.create({"pretrained": reference})) == registry.store / "sentiment" / "2" / "export"
    validate(["experiment=smoke", f"model.pretrained={reference}", "model.random_init=false"], plugins())
    with pytest.raises(RegistryError, match="no version of sentiment is in stage 'staging'"):
        validate(["experiment=smoke", "model.pretrained=registry:sentiment@staging"], plugins())


def corrupt(path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    return original


def test_backup_survives_a_corrupted_and_a_lost_file(smoke_run, registry, tmp_path, cli):
    registry.add(smoke_run, "sentiment")
    registry.add(smoke_run, "sentiment")
    registry.promote("sentiment", 2, "production")
    dest = tmp_path / "backup"
    manifest = backup(registry, dest)
    assert manifest["versions"] == ["sentiment@1", "sentiment@2"] and (dest / MANIFEST).is_file()
    assert verify_backup(dest) == []

    weights = registry.store / "sentiment" / "2" / "export" / "model.safetensors"
    original = corrupt(weights)
    (registry.store / "sentiment" / "1" / "config.yaml").unlink()
    checked, problems = verify_registry(registry)
    assert problems == [
        f"sentiment version 1: {registry.store}/sentiment/1/config.yaml is missing",
        f"sentiment version 2: {weights} does not match its sha256 (corrupt)",
    ]
    found = cli("registry", "verify")
    assert found.returncode == 1 and f"{weights} does not match its sha256" in found.stderr
    with pytest.raises(RegistryError, match="config.yaml is missing from the registry store"):
        backup(registry, dest)  # a damaged registry is never backed up over a good backup
    assert verify_backup(dest) == []

    restored = cli("registry", "restore", str(dest))
    assert (
        restored.returncode == 0
        and "restored 2 versions" in restored.stdout
        and "2 files copied back" in restored.stdout
    )
    assert weights.read_bytes() == original and verify_registry(registry) == (checked, [])
    assert registry.get("sentiment@production")["version"] == 2

    corrupt(dest / "store" / "sentiment" / "1" / "export" / "model.safetensors")
    found = cli("registry", "verify", str(dest))
    assert found.returncode == 1 and "sentiment/1/export/model.safetensors does not match its sha256" in found.stderr
    one_line_error(cli("registry", "restore", str(dest)), "is damaged, nothing restored")


def test_restore_repairs_a_corrupt_database_and_keeps_later_versions_unless_forced(smoke_run, registry, tmp_path, cli):
    registry.add(smoke_run, "sentiment")
    backup(registry, tmp_path / "backup")
    registry.add(smoke_run, "sentiment")
    with pytest.raises(RegistryError, match=r"has versions the backup .* lacks \(sentiment@2\).*pass --force"):
        restore(registry, tmp_path / "backup")
    assert len(registry.versions()) == 2
    database = tmp_path / "registry" / "registry.db"
    registry.close()
    database.write_bytes(b"this is no database" * 100)
    one_line_error(cli("registry", "list"), f"the registry database {database} is corrupt (file is not a database)")
    assert restore(Registry(), tmp_path / "backup") == (1, 0)
    assert [r["version"] for r in Registry().versions()] == [1]


#: Kills its own process (SIGKILL, no clean-up) when it starts writing weights under a directory whose path holds
#: ``$KILL_UNDER``.
KILL_HALF_WAY = """
import os, signal, sys
def kill_at_the_weights(event, args):
    if event == "open" and os.environ["KILL_UNDER"] in str(args[0]) and "model.safetensors" in os.path.basename(str(args[0])):
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at_the_weights)
from tessera.core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_half_way(under: str, *args: str):
    """``tessera ARGS`` in a child process killed when it starts writing weights under a path holding ``under``."""
    return subprocess.run(
        [sys.executable, "-c", KILL_HALF_WAY, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "KILL_UNDER": under},
        timeout=300,
    )


def backup_in_child(dest, limit: int):
    """``tessera registry backup DEST`` in a child process whose files are limited to ``limit`` bytes (a write
    beyond fails as on a full disk)."""
    return subprocess.run(
        [sys.executable, "-m", "tessera", "registry", "backup", str(dest)],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        timeout=300,
    )


def test_a_killed_backup_is_detected_and_a_full_destination_loses_nothing(smoke_run, registry, tmp_path, cli):
    registry.add(smoke_run, "sentiment")
    dest = tmp_path / "backup"
    killed = killed_half_way("/.backup.", "registry", "backup", str(dest))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not dest.exists()
    (partial,) = tmp_path.glob(".backup.*")
    assert (partial / "registry.db").is_file() and not (partial / MANIFEST).exists()
    one_line_error(cli("registry", "verify", str(dest)), f"no backup at {dest} ({partial} is an interrupted backup")
    one_line_error(cli("registry", "restore", str(partial)), f"{partial} is not a complete backup (no {MANIFEST}")

    backup(registry, dest)  # a good one (the interrupted one is cleared)
    assert not list(tmp_path.glob(".backup.*")) and verify_backup(dest) == []
    full = backup_in_child(dest, limit=1 << 20)
    one_line_error(full, f"the backup destination {dest} is full (File too large)")
    assert verify_backup(dest) == [] and not list(tmp_path.glob(".backup.*"))

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(RegistryError, match="exists and is not a tessera registry backup"):
        backup(registry, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "notes.txt").read_text() == "mine"


@pytest.fixture
def read_only_directory(tmp_path):
    """A directory nobody may write into: its mode for a user; for root (who ignores modes) the immutable attribute
    (chattr +i), skipped where the file system or the container does not allow it."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(directory)]).returncode != 0:
        pytest.skip("root ignores file modes and chattr +i is not allowed here")
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_read_only_destination(smoke_run, registry, read_only_directory):
    registry.add(smoke_run, "sentiment")
    with pytest.raises(
        RegistryError,
        match=r"cannot write the backup to .*read-only/backup \((Permission denied|Operation not permitted)\): choose a writable",
    ):
        backup(registry, read_only_directory / "backup")
    assert list(read_only_directory.iterdir()) == []


def test_a_killed_add_registers_nothing_and_its_leftovers_are_cleared(smoke_run, registry):
    registry.add(smoke_run, "sentiment")
    killed = killed_half_way("/.incoming/", "registry", "add", str(smoke_run), "--name", "sentiment")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r["version"] for r in registry.versions()] == [1]
    assert len(list((registry.store / ".incoming").iterdir())) == 2  # its directory and its lock file
    assert registry.add(smoke_run, "sentiment")["version"] == 2
    assert not any((registry.store / ".incoming").iterdir())
    assert verify_registry(registry)[1] == []


def test_a_locked_database_loses_nothing(smoke_run, registry, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("TESSERA_REGISTRY_LOCK_TIMEOUT", "0.2")
    registry.add(smoke_run, "sentiment")
    registry.close()
    holder = sqlite3.connect(tmp_path / "registry" / "registry.db")
    holder.execute("BEGIN IMMEDIATE")  # another writer in the middle of its transaction
    try:
        result = cli("registry", "add", str(smoke_run), "--name", "sentiment")
        one_line_error(result, "is locked by another process (database is locked)")
    finally:
        holder.rollback()
        holder.close()
    assert [r["version"] for r in registry.versions()] == [1]
    assert sorted(p.name for p in (registry.store / "sentiment").iterdir()) == ["1"]
    assert not any((registry.store / ".incoming").iterdir())

    backup(registry, tmp_path / "backup")
    registry.close()
    holder = sqlite3.connect(tmp_path / "registry" / "registry.db")
    holder.execute("BEGIN EXCLUSIVE")  # a locked database is not taken for a corrupt one and replaced
    try:
        one_line_error(cli("registry", "restore", str(tmp_path / "backup")), "is locked by another process")
    finally:
        holder.rollback()
        holder.close()


def test_bad_databases_names_and_runs(smoke_run, registry, tmp_path, cli):
    registry.add(smoke_run, "sentiment")
    registry.close()
    database = tmp_path / "registry" / "registry.db"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE tessera_schema SET version = 99")
    one_line_error(cli("registry", "list"), "has schema version 99, newer than this tessera's 1: upgrade tessera")
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE tessera_schema SET version = 1")
    with sqlite3.connect(tmp_path / "other.db") as connection:
        connection.execute("CREATE TABLE things (x)")
    with pytest.raises(RegistryError, match="is a database but not a tessera registry"):
        Registry(str(tmp_path / "other.db")).versions()

    for reference, message in (
        ("nope", "no model named 'nope' in the registry (registered: sentiment)"),
        ("sentiment@9", "sentiment has no version 9 (versions: 1)"),
        ("sentiment@staging", "no version of sentiment is in stage 'staging' (stages: none)"),
        ("bad name", "model name 'bad name' is not valid"),
    ):
        with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")):
            registry.get(reference)
    one_line_error(cli("registry", "promote", "sentiment", "9", "--stage", "production"), "sentiment has no version 9")

    failed = copy_run(smoke_run, tmp_path / "failed")
    (failed / "run.json").write_text('{"status": "failed", "error": "DataError: bad rows"}')
    with pytest.raises(RegistryError, match=r"is not complete \(status: failed; DataError: bad rows\)"):
        registry.add(failed, "sentiment")
    unexported = copy_run(smoke_run, tmp_path / "unexported")
    shutil.rmtree(unexported / "export")
    with pytest.raises(RegistryError, match="has no export"):
        registry.add(unexported, "sentiment")
    with pytest.raises(RegistryError, match="is not a run directory"):
        registry.add(tmp_path, "sentiment")
    assert [r["version"] for r in registry.versions()] == [1]


def test_concurrent_adds_get_distinct_versions(smoke_run, registry, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def add(_):
        writer = Registry()  # a connection of its own, as another process would have
        try:
            return writer.add(smoke_run, "sentiment")["version"]
        finally:
            writer.close()

    with ThreadPoolExecutor(4) as pool:
        numbers = sorted(pool.map(add, range(4)))
    assert numbers == [1, 2, 3, 4]
    assert verify_registry(registry)[1] == []


def test_a_registry_on_a_new_machine_and_a_database_without_a_file(smoke_run, registry, tmp_path):
    registry.add(smoke_run, "sentiment")
    registry.promote("sentiment", 1, "production")
    backup(registry, tmp_path / "backup")
    elsewhere = Registry(str(tmp_path / "new" / "registry.db"))
    assert restore(elsewhere, tmp_path / "backup") == (1, len(registry.get("sentiment")["files"]))
    assert elsewhere.resolve("sentiment@production") == tmp_path / "new" / "store" / "sentiment" / "1"

    # A database without a file (as a server database is) is backed up and restored row by row.
    server = Registry("sqlite://", store=tmp_path / "server-store")
    server.add(smoke_run, "sentiment")
    backup(server, tmp_path / "server-backup")
    assert verify_backup(tmp_path / "server-backup") == []
    server.close()  # the in-memory database is gone
    assert server.versions() == []
    assert restore(server, tmp_path / "server-backup") == (1, 0)
    assert server.get("sentiment@1")["files"] == registry.get("sentiment@1")["files"]
    server.close()


def test_an_output_ensemble_registers_its_members_and_serves_from_the_store(smoke_run, registry, tmp_path, cli):
    from tessera.serving.ensemble import ensemble_export

    other = copy_run(smoke_run, tmp_path / "other")
    made = cli("ensemble", "average", str(smoke_run), str(other), f"hydra.run.dir={tmp_path / 'ensemble'}")
    assert made.returncode == 0, made.stderr[-2000:]
    row = registry.add(tmp_path / "ensemble", "sentiment-ensemble")
    assert row["kind"] == "ensemble" and row["composition"]["ensemble"] == ["average"]
    members = row["lineage"]["ensemble"]["members"]
    assert row["lineage"]["ensemble"]["method"] == "average"
    assert {m["path"] for m in members.values()} == {str(smoke_run / "export"), str(other / "export")}
    assert all(f"export/members/{name}/model.safetensors" in row["files"] for name in members)
    assert ensemble_export(registry.resolve("sentiment-ensemble")) == row["directory"] / "export"
