"""Ensemble stages: members checked before any work, combined in weight space (one model) or output space
(combined probabilities), each member's test metrics beside the ensemble's."""

import json

import numpy as np
import pytest

from conftest import load_json, plugins
from tessera.core import job
from tessera.core.cli import compose_config
from tessera.core.errors import ConfigError

SMOKE = ["experiment=smoke", "data.limit_train=32", "data.limit_eval=32"]
MEMBERS = "{name:a,init:base,overrides:['trainer.seed=1']},{name:b,init:base,overrides:['trainer.seed=2']}"
ENSEMBLES = (
    "{name:soup,init:base,overrides:['ensemble=linear','adapter=none']},"
    "{name:mean,init:base,overrides:['ensemble=average','adapter=none','ensemble.average.members=[a,b]','ensemble.average.weights=[3,1]']}"
)


def planned(overrides: list[str], run_dir) -> list[job.Stage]:
    compose = lambda o: compose_config(o, plugins())  # noqa: E731
    return job.plan(compose(overrides), overrides, compose, run_dir)


@pytest.fixture(scope="module")
def ensemble_job(tmp_path_factory):
    """Two tiny members, then a linear soup of them and a 3:1 average of their probabilities."""
    run_dir = tmp_path_factory.mktemp("ensemble") / "run"
    overrides = [*SMOKE, f"stages=[{MEMBERS},{ENSEMBLES}]"]
    job.Job(planned(overrides, run_dir), run_dir, plugins()).run()
    return run_dir


def predictions(run_dir):
    return np.array(
        [json.loads(line)["probabilities"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    )


def test_an_output_ensemble_combines_the_members_probabilities(ensemble_job):
    stages = ensemble_job / "stages"
    mean = predictions(stages / "mean")
    np.testing.assert_allclose(mean, 0.75 * predictions(stages / "a") + 0.25 * predictions(stages / "b"), atol=1e-6)
    description = load_json(stages / "mean" / "export" / "ensemble.json")
    assert description["method"] == "average" and description["weights"] == [0.75, 0.25]
    assert [m["name"] for m in description["members"]] == ["a", "b"]
    assert (stages / "mean" / "export" / "members" / "a" / "config.json").is_file()
    metrics = load_json(stages / "mean" / "metrics.json")
    member, trained = metrics["ensemble"]["members"]["a"]["test"], load_json(stages / "a" / "metrics.json")["test"]
    assert member["accuracy"] == trained["accuracy"] and member["loss"] == pytest.approx(trained["loss"], abs=1e-6)


def test_a_weight_space_ensemble_is_one_model_of_the_averaged_parameters(ensemble_job):
    from safetensors.torch import load_file

    stages = ensemble_job / "stages"
    soup, a, b = (load_file(stages / name / "export" / "model.safetensors") for name in ("soup", "a", "b"))
    for key in soup:
        np.testing.assert_allclose(soup[key].numpy(), ((a[key] + b[key]) / 2).numpy(), atol=1e-6)
    assert load_json(stages / "soup" / "metrics.json")["ensemble"]["space"] == "weights"
    assert "| metric | a | b | soup | mean |" in (ensemble_job / "report.md").read_text()


@pytest.mark.parametrize(
    "stages, message",
    [
        (
            "{name:a,init:base},{name:e,init:base,overrides:['ensemble=average','adapter=none']}",
            "ensemble=average needs at least two members and has 1",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=average','adapter=none','ensemble.average.weights=[1]']}}",
            "ensemble=average: 1 weights for 2 members: give one weight per member",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=average']}}",
            "ensemble=average cannot be combined with adapter=lora: an ensemble stage trains nothing: set adapter=none",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=average','adapter=none','ensemble.average.members=[a,/nowhere]']}}",
            "ensemble=average: members=/nowhere is neither an earlier stage of this job",
        ),
    ],
)
def test_bad_members_are_refused_before_any_work(tmp_path, stages, message):
    with pytest.raises(ConfigError) as caught:
        job.validate(planned([*SMOKE, f"stages=[{stages}]"], None), plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)
