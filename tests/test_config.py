"""The whole composition is validated before any work, with messages that list the valid names."""

import pytest

from conftest import plugins
from tessera.core.cli import validate
from tessera.core.errors import ConfigError, DataError, IncompatibleError


@pytest.fixture(autouse=True, scope="module")
def hydra_store():
    plugins()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adapter=lorax"], "unknown adapter 'lorax': choose one of adalora, dora, freeze, gradual_unfreeze, ia3, "),
        (["model=bert-huge"], "unknown model 'bert-huge': choose one of minilm, smollm2, tiny"),
        (["trainer.epoch=2"], "unknown parameter 'trainer.epoch' (did you mean trainer.epochs?)"),
        (["adapter.lora.rank=4"], "valid keys of adapter.lora are alpha, bias, dropout, modules_to_save, r,"),
        (["adapter.lora.r=four"], "invalid value for 'adapter.lora.r'"),
        (["objective=none"], "no objective selected: choose one of classification"),
        (
            ["adapter.dora.r=8"],
            "adapter.dora.r=8 sets a parameter of adapter 'dora', which is not selected: add adapter=dora",
        ),
        (["adapter.nope.r=8"], "adapter.nope.r=8: unknown adapter 'nope': choose one of none, adalora,"),
    ],
)
def test_bad_config_names_the_problem_and_the_choices(overrides, message):
    with pytest.raises(ConfigError) as caught:
        validate(["experiment=smoke", *overrides], plugins())
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_incompatible_pair_names_both():
    with pytest.raises(IncompatibleError) as caught:
        validate(["experiment=smoke", "adapter.lora.target_modules=[q_proj,v_proj]"], plugins())
    message = str(caught.value)
    assert "adapter=lora" in message and "model=tiny" in message and "query" in message


def test_override_types_are_checked_and_applied():
    from tessera.core.cli import compose_config

    cfg = compose_config(["adapter=lora", "adapter.lora.r=4", "trainer.learning_rate=3e-4"], plugins())
    assert cfg.adapter.lora.r == 4 and cfg.trainer.learning_rate == pytest.approx(3e-4)
    assert list(compose_config(["adapter=none"], plugins()).adapter) == []


def test_user_data_without_a_path_is_refused():
    with pytest.raises(DataError, match=r"data=csv needs a file: add data.path="):
        validate(["experiment=smoke", "data=csv"], plugins())


def test_multirun_validates_every_job_before_any_runs():
    validate(["-m", "experiment=smoke", "trainer.seed=1,2"], plugins(), multirun=True)
    with pytest.raises(ConfigError, match="unknown adapter 'lorax'"):
        validate(["-m", "experiment=smoke", "adapter=lora,lorax"], plugins(), multirun=True)
