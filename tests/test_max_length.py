"""``data.max_length: auto`` (the default): the 95th percentile of the training texts' token lengths, capped at the
model's limit, logged and written into the run's config and its saved copy; a number is kept, a bad value refused."""

import pytest
from omegaconf import OmegaConf

from conftest import plugins, tessera
from tessera.core.cli import compose_config, validate
from tessera.core.errors import ConfigError

#: Texts of 1..20 times a word that is one token of the tiny model's (BERT) tokenizer: 3..22 tokens with [CLS] [SEP].
TEXTS = [" ".join(["good"] * words) for words in range(1, 21)]


@pytest.fixture(scope="module", autouse=True)
def hydra_store():
    plugins()


def auto_run(tmp_path, *overrides):
    """A run of ``experiment=smoke`` (max_length auto) in ``tmp_path``, with its config saved as Hydra saves it."""
    from tessera.core.run import Run, compose

    cfg = compose_config(["experiment=smoke", *overrides], plugins())
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    return Run(compose(cfg, plugins()), tmp_path)


def test_the_percentile_of_known_lengths():
    from tessera.core.max_length import percentile_length
    from tessera.core.models import load_tokenizer

    tokenizer = load_tokenizer(compose_config(["experiment=smoke"], plugins()).model)
    assert [len(ids) for ids in tokenizer(TEXTS[:3])["input_ids"]] == [3, 4, 5]
    assert percentile_length(tokenizer, TEXTS) == 21  # the 19th of 20 lengths
    assert percentile_length(tokenizer, TEXTS, 50) == 12


def test_auto_is_resolved_logged_and_saved(tmp_path, caplog):
    from tessera.core.max_length import resolve_max_length

    run = auto_run(tmp_path)
    with caplog.at_level("INFO", logger="tessera"):
        assert resolve_max_length(run, [{"text": text} for text in TEXTS]) == 21
    assert run.cfg.data.max_length == 21
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").data.max_length == 21
    assert "max_length auto: 21 tokens (95th percentile of 20 training texts, model limit 512)" in caplog.text


def test_auto_is_capped_at_the_model_limit(tmp_path, caplog):
    from tessera.core.max_length import resolve_max_length

    run = auto_run(tmp_path, "+model.config_overrides.max_position_embeddings=16")
    with caplog.at_level("INFO", logger="tessera"):
        assert resolve_max_length(run, [{"text": text} for text in TEXTS]) == 16
    assert "max_length auto: 16 tokens (95th percentile of 20 training texts, capped from 21, model limit 16)" in (
        caplog.text
    )


def test_a_number_is_kept(tmp_path):
    from tessera.core.max_length import resolve_max_length

    run = auto_run(tmp_path, "data.max_length=7")
    assert resolve_max_length(run, [{"text": text} for text in TEXTS]) == 7
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").data.max_length == 7


@pytest.mark.parametrize("value", ["0", "-3", "long", "2.5"])
def test_a_bad_value_is_refused_in_one_line(value):
    with pytest.raises(ConfigError, match=rf"^data.max_length={value} must be a positive number of tokens or auto$"):
        validate(["experiment=smoke", f"data.max_length={value}"], plugins())


def test_the_smoke_run_saves_and_logs_the_number(smoke_run):
    saved = OmegaConf.load(smoke_run / ".hydra" / "config.yaml").data.max_length
    assert isinstance(saved, int) and saved == 48
    assert "max_length auto: 48 tokens (95th percentile of 320 training texts, model limit 512)" in (
        (smoke_run / "train.log").read_text()
    )


def test_the_command_line_refuses_a_bad_value(tmp_path):
    result = tessera("train", "experiment=smoke", "data.max_length=0", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    message = "error: data.max_length=0 must be a positive number of tokens or auto"
    assert result.stderr.strip().splitlines() == [message]
