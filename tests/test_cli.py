"""Bad input on the command line: one line naming the problem and the fix, exit status 2, no run directory."""

import pytest

from conftest import tessera


@pytest.mark.parametrize(
    "overrides, env, message",
    [
        (["data=csv", "data.path=/nonexistent/reviews.csv"], {}, "does not exist: set data.path"),
        (["trainer.epochss=2"], {}, "did you mean trainer.epochs?"),
        (["adapter=lorra"], {}, "unknown adapter 'lorra': choose one of adalora, dora, freeze,"),
        ([], {"TESSERA_HOME": "{tmp}/empty-home"}, "is not fetched: run `tessera assets fetch "),
    ],
    ids=["missing-data-file", "config-typo", "unknown-technique", "asset-not-fetched"],
)
def test_bad_input_fails_in_one_line_and_leaves_no_run_directory(tmp_path, overrides, env, message):
    run_dir = tmp_path / "run"
    env = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    result = tessera("train", "experiment=smoke", *overrides, f"hydra.run.dir={run_dir}", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not run_dir.exists()


def test_csv_without_the_configured_column(tmp_path):
    data = tmp_path / "mine.csv"
    data.write_text("review,label\ngood,pos\nbad,neg\n")
    result = tessera("train", "experiment=smoke", "data=csv", f"data.path={data}", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert "has no column 'text' (it has review, label): set data.text_column" in result.stderr
    assert not (tmp_path / "run").exists()


def test_help_and_version_answer_without_heavy_imports():
    result = tessera("--help")
    assert result.returncode == 0 and "train" in result.stdout and "plugins" in result.stdout
    probe = tessera("--version")
    assert probe.returncode == 0 and probe.stdout.startswith("tessera ")


def test_plugins_command_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from tessera.core.cli import main; main(['plugins']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().endswith("False"), result.stdout + result.stderr
