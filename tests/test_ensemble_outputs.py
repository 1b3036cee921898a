"""Output-space ensembles: ``vote`` and ``stacking`` on given probabilities, stacking fitted on the validation split
only and refused without one, an export that ``tessera predict`` and ``tessera serve`` (each member behind vLLM,
one /classify in front) reproduce exactly, and a member that cannot start stopping the whole ensemble."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_serve import Served

from conftest import load_json, plugins, tessera
from tessera.core import job
from tessera.core.cli import compose_config
from tessera.core.errors import ConfigError
from tessera.core.techniques import EnsembleConfig
from tessera.plugins.ensemblers.stacking import Stacking, StackingConfig
from tessera.plugins.ensemblers.vote import Vote

#: 40 validation and 48 test examples, so what stacking was fitted on shows in its example count.
SMOKE = ["experiment=smoke", "data.limit_train=32", "data.limit_eval=48", "data.validation_fraction=0.01"]
MEMBERS = "{name:a,init:base,overrides:['trainer.seed=1']},{name:b,init:base,overrides:['trainer.seed=2']}"
STACK = "{name:stack,init:base,overrides:['ensemble=stacking','adapter=none','ensemble.stacking.members=[a,b]']}"
VOTE = "{name:vote,init:base,overrides:['ensemble=vote','adapter=none','ensemble.vote.members=[a,b]']}"
KEY = "ensemble-key"


def planned(overrides: list[str], run_dir) -> list[job.Stage]:
    compose = lambda o: compose_config(o, plugins())  # noqa: E731
    return job.plan(compose(overrides), overrides, compose, run_dir)


def one_hot_rows(*rows):
    return np.array(rows, dtype=float)


def test_vote_takes_the_majority_and_breaks_ties_with_the_summed_probabilities():
    a = one_hot_rows([0.9, 0.1, 0.0], [0.40, 0.35, 0.25], [0.2, 0.3, 0.5])
    b = one_hot_rows([0.2, 0.7, 0.1], [0.10, 0.85, 0.05], [0.1, 0.1, 0.8])
    c = one_hot_rows([0.6, 0.3, 0.1], [0.30, 0.20, 0.50], [0.6, 0.3, 0.1])
    shares = Vote(EnsembleConfig()).combine([a, b, c], [1 / 3] * 3)
    assert shares.argmax(axis=1).tolist() == [0, 1, 2]  # two of three; a three-way tie: class 1 sums to 1.40
    np.testing.assert_allclose(shares[0], [2 / 3, 1 / 3, 0], atol=1e-5)
    np.testing.assert_allclose(shares.sum(axis=1), 1)
    # Weights are vote weights: c alone outweighs a and b together.
    assert Vote(EnsembleConfig()).combine([a, b, c], [0.2, 0.2, 0.6]).argmax(axis=1).tolist() == [0, 2, 0]


def informative_members(examples: int, seed: int):
    """Two members' probabilities on ``examples`` examples of three classes: one informative, one noise."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, examples)
    logits = generator.normal(size=(examples, 3))
    logits[np.arange(examples), labels] += 2.5
    good = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    noise = generator.dirichlet(np.ones(3), examples)
    return [good, noise], labels


def test_stacking_learns_on_validation_and_its_state_reproduces_it():
    validation, labels = informative_members(120, seed=0)
    test, test_labels = informative_members(200, seed=1)
    stacking = Stacking(StackingConfig(folds=4))
    stacking.fit(validation, labels)
    state = json.loads(json.dumps(stacking.state()))
    combined = stacking.combine(test, None)
    assert state["examples"] == 120 and state["C"] in StackingConfig().cs
    assert (combined.argmax(axis=1) == test_labels).mean() > 0.75
    coefficients = np.abs(np.asarray(state["coefficients"]))
    assert coefficients[:, :3].sum() > 2 * coefficients[:, 3:].sum(), "the informative member counts more"
    restored = Stacking(StackingConfig())
    restored.load_state(state)
    np.testing.assert_allclose(restored.combine(test, None), combined, atol=1e-12)
    binary = Stacking(StackingConfig())
    binary.fit([p[:, :2] / p[:, :2].sum(1, keepdims=True) for p in validation], labels % 2)
    np.testing.assert_allclose(binary.combine([p[:, :2] for p in test], None).sum(axis=1), 1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.validation_fraction=0"],
            "ensemble=stacking fits its meta-classifier on the validation split, and data=movie_reviews has none",
        ),
        (
            ["data.limit_eval=0"],
            "ensemble=stacking fits its meta-classifier on the validation split, and data=movie_reviews has none",
        ),
    ],
)
def test_stacking_without_a_validation_split_is_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError) as caught:
        job.validate(planned([*SMOKE, *overrides, f"stages=[{MEMBERS},{STACK}]"], None), plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """Two tiny members, a stacking ensemble and a vote of them."""
    run_dir = tmp_path_factory.mktemp("stacked") / "run"
    overrides = [*SMOKE, "trainer.num_threads=1", f"stages=[{MEMBERS},{STACK},{VOTE}]"]
    job.Job(planned(overrides, run_dir), run_dir, plugins()).run()
    return run_dir


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_vote_of_two_members_is_their_agreement_or_the_summed_probabilities(stacked):
    stages = stacked / "stages"
    a, b, vote = (
        np.array([r["probabilities"] for r in rows(stages / n / "predictions.jsonl")]) for n in ("a", "b", "vote")
    )
    assert set(np.round(vote.max(axis=1), 4).tolist()) <= {0.5, 1.0}, "vote shares of two equal members"
    np.testing.assert_array_equal(vote.argmax(axis=1), (a + b).argmax(axis=1))
    agree = a.argmax(axis=1) == b.argmax(axis=1)
    np.testing.assert_allclose(vote[agree].max(axis=1), 1, atol=1e-5)
    assert load_json(stages / "vote" / "metrics.json")["ensemble"]["method"] == "vote"


def test_serve_and_predict_find_the_ensemble_of_a_stage_or_of_a_job_that_ends_with_one(stacked):
    from tessera.serving.ensemble import ensemble_export

    stages = stacked / "stages"
    assert ensemble_export(stacked) == stages / "vote" / "export"
    assert (
        ensemble_export(stages / "stack") == ensemble_export(stages / "stack" / "export") == stages / "stack" / "export"
    )
    assert ensemble_export(stages / "a") is None and ensemble_export(stages / "a" / "export") is None


def test_stacking_export_reloads_through_predict_to_the_runs_predictions(stacked, tmp_path):
    from tessera.core.data import load_splits

    stage = stacked / "stages" / "stack"
    expected = rows(stage / "predictions.jsonl")
    description = load_json(stage / "export" / "ensemble.json")
    validation = load_splits(json_config(stage).data).validation
    assert description["method"] == "stacking" and description["state"]["examples"] == len(validation) == 40
    assert len(expected) == 48, "fitted on the 40 validation examples, never on the 48 test ones"
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(row["text"].replace("\n", " ") + "\n" for row in expected))
    result = tessera("predict", str(stage), str(texts), "--engine", "transformers")
    assert result.returncode == 0, result.stderr[-3000:]
    got = rows(tmp_path / "texts.predictions.jsonl")
    np.testing.assert_allclose(
        [[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in got],
        [r["probabilities"] for r in expected],
        atol=1e-5,
    )
    assert [r["label"] for r in got] == [["negative", "positive"][r["prediction"]] for r in expected]


def json_config(stage: Path):
    from omegaconf import OmegaConf

    return OmegaConf.load(stage / "config.yaml")


def post(url: str, payload: dict, key: str | None = KEY):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_serve_answers_with_the_combined_probabilities_and_a_failing_member_stops_all(stacked, tmp_path):
    stage = stacked / "stages" / "stack"
    expected = rows(stage / "predictions.jsonl")[:16]
    texts = [row["text"] for row in expected]
    served = Served(stage, "--api-key", KEY)
    try:
        assert served.models == ["stacking-ensemble"] and len(served.server_pids) == 2
        status, answer = post(f"{served.url}/classify", {"model": "stacking-ensemble", "input": texts})
        assert status == 200, answer
        np.testing.assert_allclose(
            [item["probs"] for item in answer["data"]], [r["probabilities"] for r in expected], atol=1e-4
        )
        assert [item["label"] for item in answer["data"]] == [
            ["negative", "positive"][r["prediction"]] for r in expected
        ]
        status, answer = post(f"{served.url}/classify", {"input": texts[:4], "members": True})
        assert status == 200 and list(answer["data"][0]["members"]) == ["a", "b"]
        for name in ("a", "b"):
            member = rows(stacked / "stages" / name / "predictions.jsonl")[:4]
            np.testing.assert_allclose(
                [item["members"][name] for item in answer["data"]], [r["probabilities"] for r in member], atol=1e-4
            )
        assert post(f"{served.url}/classify", {"model": "nope", "input": "x"})[0] == 404
        assert post(f"{served.url}/classify", {"input": "x"}, key=None)[0] == 401
    finally:
        output = served.stop()
    assert " POST /classify 200 " in output
    broken = tmp_path / "broken"
    shutil.copytree(stage / "export", broken)
    config = load_json(broken / "members" / "b" / "config.json")
    config["architectures"] = ["CorruptedForSequenceClassification"]  # vLLM refuses it as it starts the engine
    (broken / "members" / "b" / "config.json").write_text(json.dumps(config))
    result = tessera("serve", str(broken), "--port", "0", timeout=600)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "ensemble member b could not start, so the ensemble stops" in message, result.stderr[-3000:]
    assert "\n" not in message and "tessera serve: stopped" not in result.stdout
    leftover = [p for p in Path("/proc").glob("[0-9]*") if str(broken) in _command_line(p)]
    assert not leftover, leftover


def _command_line(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""
