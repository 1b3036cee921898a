"""Shared helpers: run the real ``tessera`` command line in a subprocess, and make third-party plugin packages."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def tessera(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 2400):
    """Run ``python -m tessera ARGS`` offline; return the completed process (never raises on failure)."""
    return subprocess.run(
        [sys.executable, "-m", "tessera", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd or REPO,
        timeout=timeout,
    )


def make_plugin(root: Path, name: str, source: str, distribution: str | None = None) -> Path:
    """Install a one-module plugin package into ``root`` (a directory to put on PYTHONPATH): its module
    ``<name>_plugin`` holds ``source`` and its entry point ``<name>`` is in the group ``tessera``."""
    distribution = distribution or f"{name}-plugin"
    module = f"{name}_plugin"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{distribution.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[tessera]\n{name} = {module}\n")
    return root


@functools.cache
def plugins():
    """The plugins of the test process, discovered once, with Hydra's ConfigStore filled from them (tests that
    install a plugin package run tessera in a subprocess)."""
    from tessera.core.cli import prepare_hydra
    from tessera.core.plugins import discover

    found = discover()
    prepare_hydra(found)
    return found


def load_json(path: Path):
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def trained_max_length(run_dir: Path) -> int:
    """The ``data.max_length`` a ``tessera train`` run tokenized with, from its saved config."""
    from omegaconf import OmegaConf

    return OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml").data.max_length


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One complete ``experiment=smoke`` run (tiny random model, real tokenizer and sentences, LoRA)."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = tessera("train", "experiment=smoke", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A TESSERA_HOME whose assets are the real ones (linked) and whose graph cache is empty."""
    from tessera.core.assets import tessera_home

    real = tessera_home()
    home = tmp_path / "home"
    (home / "assets").mkdir(parents=True)
    for asset in (real / "assets").iterdir():
        if not asset.name.startswith("."):
            os.symlink(asset, home / "assets" / asset.name)
    monkeypatch.setenv("TESSERA_HOME", str(home))
    return home
