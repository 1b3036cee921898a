"""The docs keep up with the code: every hookspec, technique family, config group and built-in technique is
documented.

Modelled on datasette's ``test_plugin_hooks_are_documented``: adding a hook to :mod:`tessera.core.hookspecs`
without a section in ``docs/plugins.md`` (or changing its arguments) fails here.
"""

import inspect
import re
from pathlib import Path

import pytest
from conftest import plugins
from conftest import plugins

from tessera.core import hookspecs
from tessera.core.techniques import CONFIG_FAMILIES, FAMILIES

DOCS = Path(__file__).resolve().parents[1] / "docs"
CONFIG_GROUPS = ("model", "data", "trainer", "serve", "plugins", *CONFIG_FAMILIES)


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
    found = plugins()
    return [(spec.family, spec.name) for spec in found.registry.specs()
            if found.infos[spec.plugin].builtin and spec.family in CONFIG_FAMILIES]


@pytest.mark.parametrize("family, name", builtin_techniques())
def test_builtin_techniques_are_in_the_config_reference(family, name):
    reference = (DOCS / "config.md").read_text(encoding="utf-8")
    section = reference.split(f"### `{family}`", 1)[1].split("\n## ", 1)[0].split("\n### `", 1)[0]
    assert f"| `{name}` |" in section, f"docs/config.md has no row for {family}={name} under its family"
