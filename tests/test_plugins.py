"""The plugin system: families, discovery through entry points, failures, allow / block lists."""

import json

import pytest

from conftest import make_plugin, plugins, tessera
from tessera.core.errors import ConfigError
from tessera.core.techniques import FAMILIES

GOOD_PLUGIN = """
from dataclasses import dataclass
from tessera import hookimpl
from tessera.core.techniques import Augmenter, TechniqueConfig

@dataclass
class UpperConfig(TechniqueConfig):
    copies: int = 1

class Upper(Augmenter):
    name = "upper"
    Config = UpperConfig
    def augment(self, examples, seed):
        return examples + [dict(e, text=e["text"].upper()) for e in examples for _ in range(self.config.copies)]

@hookimpl
def tessera_augmenters():
    return [Upper]
"""


def plugins_json(env=None) -> dict:
    result = tessera("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plugins_json_lists_every_family_and_the_builtins():
    report = plugins_json()
    assert list(report["techniques"]) == list(FAMILIES)
    assert len(FAMILIES) == 10 and "kg_loader" in report["techniques"]
    assert report["techniques"]["logger"] == ["mlflow"]
    assert all(isinstance(names, list) for names in report["techniques"].values())
    assert "classification" in report["techniques"]["objective"]
    assert "lora" in report["techniques"]["adapter"]
    names = {plugin["name"]: plugin["version"] for plugin in report["plugins"]}
    assert {"tessera.objectives", "tessera.adapters", "tessera.console", "tessera.tensorboard"} <= set(names)


def test_third_party_plugin_is_discovered_with_its_version(tmp_path):
    make_plugin(tmp_path, "upper", GOOD_PLUGIN)
    report = plugins_json({"PYTHONPATH": str(tmp_path)})
    assert {"name": "upper", "version": "0.3.0", "distribution": "upper-plugin"} in report["plugins"]
    assert "upper" in report["techniques"]["augment"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("raise ImportError('no module named shiny_dependency')", "shiny_dependency"),
        ("from tessera import hookimpl\n@hookimpl\ndef tessera_no_such_hook():\n    pass\n", "tessera_no_such_hook"),
        ("from tessera import hookimpl\n@hookimpl\ndef tessera_adapters():\n    return [object]\n", "not a subclass"),
    ],
    ids=["import-error", "unknown-hook", "bad-registration"],
)
def test_broken_plugin_is_reported_by_name_and_skipped(tmp_path, source, expected):
    make_plugin(tmp_path, "broken", source)
    make_plugin(tmp_path, "upper", GOOD_PLUGIN)
    report = plugins_json({"PYTHONPATH": str(tmp_path)})
    failures = {failure["name"]: failure["error"] for failure in report["failed"]}
    assert expected in failures["broken"]
    assert "broken" not in {plugin["name"] for plugin in report["plugins"]}
    assert "upper" in report["techniques"]["augment"]
    assert "lora" in report["techniques"]["adapter"]
    human = tessera("plugins", env={"PYTHONPATH": str(tmp_path)})
    assert human.returncode == 0 and "skipped plugin broken" in human.stderr


def test_every_technique_names_its_provider_and_strict_mode_fails_on_a_skipped_plugin(tmp_path):
    make_plugin(tmp_path, "upper", GOOD_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    report = plugins_json(env)
    assert report["providers"]["augment/upper"] == "upper"
    assert report["providers"]["adapter/lora"] == "tessera.adapters"
    assert set(report["providers"]) == {
        f"{family}/{name}" for family, names in report["techniques"].items() for name in names
    }
    human = tessera("plugins", env=env)
    assert "upper [upper]" in human.stdout and "lora [" not in human.stdout
    assert tessera("plugins", "--strict", env=env).returncode == 0
    make_plugin(tmp_path, "broken", "raise ImportError('no module named shiny_dependency')")
    assert tessera("plugins", env=env).returncode == 0
    strict = tessera("plugins", "--strict", env=env)
    assert strict.returncode == 1 and "strict mode: 1 plugin(s) skipped: broken" in strict.stderr
    by_environment = tessera("train", "experiment=smoke", env={**env, "TESSERA_PLUGINS_STRICT": "1"})
    assert by_environment.returncode == 2 and "strict mode" in by_environment.stderr.strip().splitlines()[-1]


def test_a_block_list_naming_no_installed_plugin_warns():
    result = tessera("plugins", "--json", env={"TESSERA_PLUGINS_BLOCK": "tessera.consle"})
    assert result.returncode == 0
    report = json.loads(result.stdout)
    installed = ", ".join(sorted(plugin["name"] for plugin in report["plugins"]))
    assert report["warnings"] == [
        f"TESSERA_PLUGINS_BLOCK names 'tessera.consle', which is not an installed plugin: installed plugins are {installed}"
    ]
    human = tessera("plugins", env={"TESSERA_PLUGINS_BLOCK": "tessera.consle"})
    assert "warning: TESSERA_PLUGINS_BLOCK names 'tessera.consle'" in human.stderr


def test_the_documented_aggregator_plugin_runs_a_federation(tmp_path):
    from test_docs import DOCS, python_block

    source = python_block((DOCS / "federated.md").read_text(encoding="utf-8"), "## Writing an aggregator")
    make_plugin(tmp_path, "fair", source)
    env = {"PYTHONPATH": str(tmp_path)}
    assert "unweighted" in plugins_json(env)["techniques"]["aggregator"]
    run_dir = tmp_path / "run"
    result = tessera(
        "train",
        "experiment=smoke",
        "aggregator=unweighted",
        "federated.clients=3",
        "federated.rounds=1",
        "federated.local_steps=2",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    federated = json.loads((run_dir / "metrics.json").read_text())["federated"]
    assert federated["aggregator"] == "unweighted" and federated["rounds"][0]["answered"] == 3


def test_a_second_plugin_cannot_take_a_registered_name(tmp_path):
    make_plugin(tmp_path, "upper", GOOD_PLUGIN)
    make_plugin(tmp_path, "twin", GOOD_PLUGIN)
    report = plugins_json({"PYTHONPATH": str(tmp_path)})
    assert "upper" in report["techniques"]["augment"]
    assert "already registered by plugin 'upper'" in {f["name"]: f["error"] for f in report["failed"]}["twin"]


def test_environment_block_and_allow_lists(tmp_path):
    make_plugin(tmp_path, "upper", GOOD_PLUGIN)
    blocked = plugins_json(
        {"PYTHONPATH": str(tmp_path), "TESSERA_PLUGINS_BLOCK": "upper,tessera.adapters,tessera.augmenters"}
    )
    assert blocked["techniques"]["augment"] == [] and blocked["techniques"]["adapter"] == []
    not_allowed = plugins_json({"PYTHONPATH": str(tmp_path), "TESSERA_PLUGINS_ALLOW": "someone-else"})
    assert "upper" not in not_allowed["techniques"]["augment"]
    assert "classification" in not_allowed["techniques"]["objective"]
    allowed = plugins_json({"PYTHONPATH": str(tmp_path), "TESSERA_PLUGINS_ALLOW": "upper"})
    assert "upper" in allowed["techniques"]["augment"]


def test_config_key_blocks_a_plugin_for_one_run():
    from tessera.core.cli import validate

    plugins()
    with pytest.raises(ConfigError, match="comes from plugin 'tessera.adapters'"):
        validate(["experiment=smoke", "plugins.block=[tessera.adapters]"], plugins())
    validate(["experiment=smoke", "adapter=none", "plugins.block=[tessera.adapters]"], plugins())
    with pytest.raises(ConfigError, match="unknown plugin 'nope'"):
        validate(["experiment=smoke", "plugins.block=[nope]"], plugins())


def test_blocked_logger_receives_no_events():
    from tessera.core.cli import compose_config
    from tessera.core.run import compose

    plugins()
    composition = compose(
        compose_config(["experiment=smoke", "plugins.block=[tessera.tensorboard]"], plugins()), plugins()
    )
    registered = {name for name, _ in composition.plugins.manager.list_name_plugin()}
    assert "tessera.tensorboard" not in registered and "tessera.console" in registered
