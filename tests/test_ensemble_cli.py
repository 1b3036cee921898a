"""``tessera ensemble`` and the member checks through the command line: one tiny member trained once, the bad
members real copies of it whose config.json, tokenizer or run.json really differ; each refused in one line with exit
status 2 before any run directory exists."""

import json
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import load_json, plugins
from tessera.core.cli import main
from tessera.core.ensemble_cli import expand_members


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    """One tiny run trained through ``tessera train`` (so it has its ``.hydra/config.yaml``)."""
    run = tmp_path_factory.mktemp("members") / "run"
    overrides = ["experiment=smoke", "data.limit_train=32", "data.limit_eval=24", "trainer.num_threads=1"]
    assert main(["train", *overrides, f"hydra.run.dir={run}"]) == 0
    return run


def copy_of(member, target, edit_config=None, edit_tokenizer=None):
    """A copy of the member's export with its config.json / tokenizer.json edited."""
    shutil.copytree(member / "export", target)
    for name, edit in (("config.json", edit_config), ("tokenizer.json", edit_tokenizer)):
        if edit is not None:
            content = json.loads((target / name).read_text())
            edit(content)
            (target / name).write_text(json.dumps(content))
    return target


def predictions(run):
    return np.array(
        [json.loads(line)["probabilities"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    )


def test_a_sweep_directory_stands_for_its_job_directories(member, tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-02" / "10-00-00"
    for job in ("0", "1", "10", "2"):
        shutil.copytree(member, sweep / job)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert expand_members([str(sweep), str(member)]) == [
        *(str(sweep / job) for job in ("0", "1", "2", "10")),
        str(member),
    ]


def test_tessera_ensemble_runs_on_the_members_test_split(member, tmp_path):
    sweep = tmp_path / "multirun" / "day" / "time"
    for job in ("0", "1"):
        shutil.copytree(member, sweep / job)
    output = tmp_path / "ensemble"
    assert main(["ensemble", "average", str(sweep), "trainer.num_threads=1", f"hydra.run.dir={output}"]) == 0
    saved = OmegaConf.load(output / ".hydra" / "config.yaml")
    assert saved.data.limit_eval == 24 and saved.model.name == "tiny" and saved.adapter == {}
    metrics = load_json(output / "metrics.json")
    assert metrics["ensemble"]["method"] == "average" and list(metrics["ensemble"]["members"]) == ["0", "1"]
    assert metrics["test"]["examples"] == load_json(member / "metrics.json")["test"]["examples"] == 24
    np.testing.assert_allclose(predictions(output), predictions(member), atol=1e-6)  # two copies: the member itself
    assert (output / "export" / "ensemble.json").is_file()


@pytest.fixture(scope="module")
def bad_members(member, tmp_path_factory):
    """Name -> a real directory that differs from the member in one way."""
    root = tmp_path_factory.mktemp("bad")
    incomplete = root / "incomplete"
    shutil.copytree(member, incomplete)
    status = load_json(incomplete / "run.json")
    (incomplete / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    shutil.copytree(member, root / "job" / "stages" / "seed1")
    shutil.copy(member / "run.json", root / "job" / "run.json")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no model here\n")

    def relabel(config):
        config["id2label"] = {"0": "negative", "1": "neutral"}
        config["label2id"] = {"negative": 0, "neutral": 1}

    def deeper(config):
        config["num_hidden_layers"] = 3

    def another_vocabulary(tokenizer):
        tokenizer["model"]["vocab"]["tesseraword"] = len(tokenizer["model"]["vocab"])

    return {
        "missing": root / "nowhere",
        "incomplete": incomplete,
        "empty": root / "empty",
        "job": root / "job",
        "labels": copy_of(member, root / "labels", edit_config=relabel),
        "architecture": copy_of(member, root / "architecture", edit_config=deeper),
        "tokenizer": copy_of(member, root / "tokenizer", edit_tokenizer=another_vocabulary),
    }


CASES = [
    ("average", "missing", [], "nor an existing directory"),
    ("average", "incomplete", [], "is a run that did not complete (status: interrupted)"),
    ("average", "job", [], "is a job of several stages (seed1): give its stage directories"),
    ("average", "empty", [], "nor a run or Hugging Face model directory (no config.json)"),
    ("average", "labels", [], "they predict different labels (['negative', 'positive'] and ['negative', 'neutral'])"),
    ("linear", "architecture", [], "linear merges weights of one architecture, and their num_hidden_layers differs"),
    ("linear", "tokenizer", [], "their tokenizers differ: merge models of one base"),
    ("average", "tokenizer", [], "their tokenizers differ: every member is fed the same tokens"),
    (None, None, ["ensemble.average.weights=[1,2,3]"], "ensemble=average: 3 weights for 2 members"),
]


@pytest.mark.parametrize("verb", ["ensemble", "train"])
@pytest.mark.parametrize("method, bad, extra, message", CASES)
def test_a_bad_member_is_one_line_and_exit_status_2_before_any_work(
    member, bad_members, tmp_path, capsys, verb, method, bad, extra, message
):
    method = method or "average"
    members = [str(member), str(bad_members[bad]) if bad else str(member)]
    output = tmp_path / "out"
    if verb == "ensemble":
        argv = ["ensemble", method, *members, *extra, f"hydra.run.dir={output}"]
    else:
        listed = ",".join(f"'{m}'" for m in members)
        argv = ["train", f"ensemble={method}", f"ensemble.{method}.members=[{listed}]", "adapter=none", *extra]
        argv += [f"hydra.run.dir={output}"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exited.value.code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not output.exists()


def test_an_unknown_method_is_refused_with_the_choices(member, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["ensemble", "blend", str(member), str(member)])
    assert exited.value.code == 2
    assert "unknown ensemble method 'blend': choose one of" in capsys.readouterr().err


@pytest.mark.parametrize("experiment", ["ensemble_adapters", "ensemble_seeds"])
def test_the_ensemble_experiments_end_with_an_untrained_stage_over_every_member(experiment):
    from tessera.core import job
    from tessera.core.cli import compose_config

    compose = lambda o: compose_config(o, plugins())  # noqa: E731
    overrides = [f"experiment={experiment}"]
    stages = job.plan(compose(overrides), overrides, compose, None)
    *members, ensemble = stages
    assert ensemble.init == "base" and ensemble.cfg.adapter == {} and list(ensemble.cfg.ensemble) == ["average"]
    assert all(stage.init == "base" and stage.cfg.ensemble == {} for stage in members)
    if experiment == "ensemble_adapters":
        assert [list(stage.cfg.adapter) for stage in members] == [["lora"], ["ia3"], []]
        assert [stage.cfg.trainer.learning_rate for stage in members] == [1e-3, 5e-3, 5e-5]
