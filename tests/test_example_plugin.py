"""The separately installable example plugin package works from the ``tessera train`` command line."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, load_json, tessera

EXAMPLE = REPO / "examples" / "tessera-plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed by pip into a throwaway directory, as PYTHONPATH for subprocesses."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    return {"PYTHONPATH": str(target)}


def test_example_plugin_is_listed(installed):
    report = json.loads(tessera("plugins", "--json", env=installed).stdout)
    assert {"name": "bitfit", "version": "0.1.0", "distribution": "tessera-plugin-example"} in report["plugins"]
    assert "bitfit" in report["techniques"]["adapter"]


def test_example_plugin_trains_from_the_command_line(installed, tmp_path):
    run_dir = tmp_path / "run"
    result = tessera("train", "experiment=smoke", "adapter=bitfit", f"hydra.run.dir={run_dir}", env=installed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_json(run_dir / "run.json")["composition"]["adapter"] == ["bitfit"]
    losses = [step["loss"] for step in load_json(run_dir / "metrics.json")["train"]]
    assert len(losses) == 20 and all(loss == loss for loss in losses)


def test_example_plugin_config_directory_joins_the_search_path(installed):
    result = tessera("train", "experiment=bitfit_smoke", "--cfg", "job", env=installed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bitfit:" in result.stdout and "name: tiny" in result.stdout


def test_without_the_plugin_the_technique_is_unknown():
    result = tessera("train", "experiment=smoke", "adapter=bitfit")
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: unknown adapter 'bitfit': choose one of ")
    choices = message.split("choose one of ", 1)[1].split(", ")
    assert "lora" in choices and "none" in choices and "bitfit" not in choices
