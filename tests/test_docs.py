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
    return [
        (spec.family, spec.name)
        for spec in found.registry.specs()
        if found.infos[spec.plugin].builtin and spec.family in CONFIG_FAMILIES
    ]


@pytest.mark.parametrize("family, name", builtin_techniques())
def test_builtin_techniques_are_in_the_config_reference(family, name):
    reference = (DOCS / "config.md").read_text(encoding="utf-8")
    section = reference.split(f"### `{family}`", 1)[1].split("\n## ", 1)[0].split("\n### `", 1)[0]
    assert f"| `{name}` |" in section, f"docs/config.md has no row for {family}={name} under its family"


def documented_event_order(intro: str = "In one run, the events come in this order") -> re.Pattern:
    """The hook reference's block of events in order (the first block after ``intro``), as a regular expression
    over space-separated event names (``per ...:`` repeats what it holds, on its own line or indented below it;
    ``if ...:`` makes what follows it on its line optional)."""
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    block = text.split(intro, 1)[1].split("```", 2)[1].strip("\n")
    lines = [(len(line) - len(line.lstrip()), line.strip()) for line in block.splitlines() if line.strip()]

    def parse(start: int, indent: int) -> tuple[str, int]:
        pattern, index = "", start
        while index < len(lines) and lines[index][0] == indent:
            line = lines[index][1]
            if line.startswith("per "):
                inline = line.split(":", 1)[1].split()
                if inline:
                    pattern += "(?:" + "".join(re.escape(e) + " " for e in inline) + ")+"
                    index += 1
                else:
                    inner, index = parse(index + 1, lines[index + 1][0])
                    pattern += f"(?:{inner})+"
            elif line.startswith("if "):
                pattern += "(?:" + "".join(re.escape(e) + " " for e in line.split(":", 1)[1].split()) + ")?"
                index += 1
            else:
                pattern += "".join(re.escape(event) + " " for event in line.split())
                index += 1
        return pattern, index

    pattern, _ = parse(0, 0)
    return re.compile(pattern)


def record_events(tmp_path, overrides: list[str]) -> list[str]:
    """The lifecycle events of a real run of ``overrides``, in the order they fired."""
    from tessera import hookimpl
    from tessera.core.cli import compose_config
    from tessera.core.pipeline import execute, prepare

    events = []

    class Recorder:
        @hookimpl
        def tessera_run_start(self):
            events.append("tessera_run_start")

        @hookimpl
        def tessera_before_optimizer_step(self):
            events.append("tessera_before_optimizer_step")

        @hookimpl
        def tessera_step_end(self):
            events.append("tessera_step_end")

        @hookimpl
        def tessera_epoch_end(self):
            events.append("tessera_epoch_end")

        @hookimpl
        def tessera_evaluation(self, split):
            events.append(f"tessera_evaluation({split})")

        @hookimpl
        def tessera_federated_round_end(self):
            events.append("tessera_federated_round_end")

        @hookimpl
        def tessera_export(self):
            events.append("tessera_export")

        @hookimpl
        def tessera_run_end(self, status):
            events.append(f"tessera_run_end({status})")

    lifecycle = {name for name in hookspec_signatures(hookspecs) if "(run" in hookspec_signatures(hookspecs)[name]}
    recorded = {name for name in dir(Recorder) if name.startswith("tessera_")}
    assert recorded == lifecycle, "the recorder must listen to every lifecycle event"
    cfg = compose_config(overrides, plugins())
    run, splits = prepare(cfg, tmp_path / "run", plugins())
    run.composition.plugins.manager.register(Recorder())
    execute(run, splits)
    return events


def test_a_real_run_fires_the_events_in_the_documented_order(tmp_path):
    overrides = ["experiment=smoke", "data.limit_train=48", "trainer.epochs=2", "compress=magnitude_prune"]
    events = record_events(tmp_path, overrides)
    assert events.count("tessera_epoch_end") == 2 and events.count("tessera_step_end") == 6
    assert "tessera_evaluation(compressed)" in events
    order = documented_event_order()
    assert order.fullmatch("".join(event + " " for event in events)), events


def test_a_real_federated_run_fires_the_events_in_the_documented_order(tmp_path):
    overrides = ["experiment=smoke", "data.limit_train=48", "aggregator=fedavg", "federated.clients=3"]
    events = record_events(tmp_path, [*overrides, "federated.rounds=2", "compress=magnitude_prune"])
    assert events.count("tessera_federated_round_end") == 2 and "tessera_step_end" not in events
    order = documented_event_order("In a federated stage (`aggregator=...`), the clients' local rounds fire")
    assert order.fullmatch("".join(event + " " for event in events)), events


def python_block(markdown: str, heading: str) -> str:
    """The first ```python block after ``heading`` (a whole Markdown heading line) in ``markdown``."""
    after = markdown.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_documented_validate_example_runs_on_real_compositions(monkeypatch):
    from tessera.core.cli import compose_config
    from tessera.core.errors import ConfigError, IncompatibleError
    from tessera.core.run import compose

    plugins()  # discovered before the example's directory (with what a build left there) is importable
    monkeypatch.syspath_prepend(str(DOCS.parent / "examples" / "tessera-plugin-example"))
    namespace = {}
    exec(
        python_block((DOCS / "plugins.md").read_text(encoding="utf-8"), "### What `validate(composition)` receives"),
        namespace,
    )
    bitfit = namespace["CheckedBitFit"](namespace["CheckedBitFit"].Config())
    plugins()

    def composition(*overrides):
        return compose(compose_config(["experiment=smoke", *overrides], plugins()), plugins())

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
