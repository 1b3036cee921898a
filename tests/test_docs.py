"""The docs keep up with the code: every hookspec, technique family, config group and built-in technique is
documented.

Modelled on datasette's ``test_plugin_hooks_are_documented``: adding a hook to :mod:`tessera.core.hookspecs`
without a section in ``docs/plugins.md`` (or changing its arguments) fails here.
"""

import inspect
import json
import re
from pathlib import Path

import pytest

from tessera.core import hookspecs
from tessera.core.techniques import FAMILIES

DOCS = Path(__file__).resolve().parents[1] / "docs"
CONFIG_GROUPS = ("model", "data", "trainer", "serve", "plugins", *FAMILIES)


def hookspec_signatures(module) -> dict[str, str]:
    """``{hook name: "name(arg, ...)"}`` for every function of ``module`` marked as a tessera hookspec."""
    return {
        name: f"{name}({', '.join(inspect.signature(function).parameters)})"
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if hasattr(function, "tessera_spec")
    }


def documented_hooks(markdown: str) -> dict[str, str]:
    """``{hook name: "name(arg, ...)"}`` for every Markdown heading that names a hook in backticks."""
    found = {}
    for line in markdown.splitlines():
        if line.startswith("#"):
            for name, args in re.findall(r"`(tessera_\w+)\(([^`]*)\)`", line):
                found[name] = f"{name}({', '.join(a.strip() for a in args.split(',') if a.strip())})"
    return found


def test_hookspecs_are_found():
    hooks = hookspec_signatures(hookspecs)
    assert "tessera_step_end" in hooks and "tessera_adapters" in hooks
    assert hooks["tessera_step_end"] == "tessera_step_end(run, step, metrics)"


@pytest.mark.parametrize("name, signature", sorted(hookspec_signatures(hookspecs).items()))
def test_plugin_hooks_are_documented(name, signature):
    documented = documented_hooks((DOCS / "plugins.md").read_text(encoding="utf-8"))
    assert name in documented, f"docs/plugins.md has no heading for the hook `{signature}`"
    assert documented[name] == signature, f"docs/plugins.md documents {documented[name]}, the hookspec is {signature}"


def test_only_real_hooks_are_documented():
    documented = documented_hooks((DOCS / "plugins.md").read_text(encoding="utf-8"))
    assert set(documented) <= set(hookspec_signatures(hookspecs)), "docs/plugins.md documents hooks that do not exist"


@pytest.mark.parametrize("family", FAMILIES)
def test_technique_families_are_documented(family):
    assert f"`{family}`" in (DOCS / "plugins.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("group", CONFIG_GROUPS)
def test_config_groups_are_documented(group):
    headings = [line for line in (DOCS / "config.md").read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(f"`{group}`" in line for line in headings), f"docs/config.md has no heading for the group `{group}`"


def builtin_techniques() -> list[tuple[str, str]]:
    """``(family, name)`` of every technique that tessera's own plugins register."""
    from tessera.core.plugins import get_plugins

    plugins = get_plugins()
    return [(spec.family, spec.name) for spec in plugins.registry.specs() if plugins.infos[spec.plugin].builtin]


@pytest.mark.parametrize("family, name", builtin_techniques())
def test_builtin_techniques_are_in_the_config_reference(family, name):
    reference = (DOCS / "config.md").read_text(encoding="utf-8")
    section = reference.split(f"### `{family}`", 1)[1].split("\n## ", 1)[0].split("\n### `", 1)[0]
    assert f"| `{name}` |" in section, f"docs/config.md has no row for {family}={name} under its family"


def python_block(markdown: str, heading: str) -> str:
    """The first ```python block after ``heading`` (a whole Markdown heading line) in ``markdown``."""
    after = markdown.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_documented_validate_example_runs_on_real_compositions():
    import sys

    from tessera.core.cli import compose_config, prepare_hydra
    from tessera.core.errors import ConfigError, IncompatibleError
    from tessera.core.run import compose

    sys.path.insert(0, str(DOCS.parent / "examples" / "tessera-plugin-example"))
    namespace = {}
    exec(python_block((DOCS / "plugins.md").read_text(encoding="utf-8"), "### What `validate(composition)` receives"),
         namespace)
    bitfit = namespace["CheckedBitFit"](namespace["CheckedBitFit"].Config())
    prepare_hydra()

    def composition(*overrides):
        return compose(compose_config(["experiment=smoke", *overrides]))

    bitfit.validate(composition())
    with pytest.raises(IncompatibleError) as caught:
        bitfit.validate(composition("objective=mlm"))
    assert str(caught.value) == "adapter=bitfit trains a classifier's head, and objective=mlm has none"
    with pytest.raises(IncompatibleError) as caught:
        bitfit.validate(composition("adapter=linear_probe"))
    assert str(caught.value) == (
        "adapter=bitfit cannot be combined with adapter=linear_probe: it freezes the biases bitfit trains"
    )
    with pytest.raises(ConfigError, match=r"^adapter=bitfit needs its head: set adapter.bitfit.head_modules="):
        namespace["CheckedBitFit"](namespace["CheckedBitFit"].Config(head_modules=[])).validate(composition())


def test_the_documented_logger_writes_one_run_per_directory(tmp_path):
    from conftest import load_json, make_plugin, tessera

    source = python_block(
        (DOCS / "plugins.md").read_text(encoding="utf-8"),
        "A logger or monitor needs no technique class at all: implement the events you care about.",
    )
    env = {"PYTHONPATH": str(make_plugin(tmp_path / "site", "steps", source))}
    run_dir = tmp_path / "run"
    for _ in range(2):
        result = tessera("train", "experiment=smoke", "data.limit_train=64", f"hydra.run.dir={run_dir}", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == [step["step"] for step in load_json(run_dir / "metrics.json")["train"]] == [1, 2, 3, 4]
