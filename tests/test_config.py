"""The config contract: every group option composes; typos and wrong types fail at compose time."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from src.config import CONFIG_DIR, run_name, validate
from src.errors import ConfigError

MODELS = {"tiny": [16], "small": [16, 16], "medium": [64, 64, 64], "large": [512, 512, 512, 512]}
REGS = {"none": (0.0, 0.0), "l2": (0.001, 0.0), "dropout": (0.0, 0.5), "l2_dropout": (0.001, 0.5)}


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_defaults_are_the_articles_setup():
    cfg = _compose()
    assert (cfg.model.name, cfg.reg.name, cfg.loop.name, cfg.data.name) == ("large", "none", "fit", "higgs")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (100, 500, 0.001)
    assert (cfg.data.n_validation, cfg.data.n_train, cfg.data.n_features) == (1000, 10000, 28)
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and cfg.mlflow.tracking_uri.endswith("/mlruns/mlflow.db")
    assert _compose("loop=tape").loop.include_reg_loss is True


@pytest.mark.parametrize("model,reg,loop", list(itertools.product(MODELS, REGS, ["fit", "tape"])))
def test_every_option_composes_and_validates(model, reg, loop):
    cfg = _compose(f"model={model}", f"reg={reg}", f"loop={loop}", "data=higgs")
    validate(cfg)
    assert list(cfg.model.hidden_units) == MODELS[model]
    assert (cfg.reg.l2, cfg.reg.dropout) == REGS[reg]
    assert run_name(cfg) == f"{loop}-{reg}-{model}"


def test_reg_strength_overrides():
    assert _compose("reg=l2", "reg.l2=1e-4").reg.l2 == 1e-4
    assert _compose("reg=dropout", "reg.dropout=0.2").reg.dropout == 0.2


@pytest.mark.parametrize(
    "override,error,needle",
    [
        (["model=huge"], MissingConfigException, "model/huge"),
        (["reg=l1"], MissingConfigException, "reg/l1"),
        (["train.epoch=3"], ConfigCompositionException, "train.epoch"),
        (["train.epochs=abc"], ConfigCompositionException, "train.epochs"),
        (["reg.l2=strong"], ConfigCompositionException, "reg.l2"),
        (["loop.include_reg_loss=false"], ConfigCompositionException, "loop.include_reg_loss"),  # fit has no such key
        (["loop=tape", "loop.include_reg_loss=maybe"], ConfigCompositionException, "loop.include_reg_loss"),
        (["data.n_trian=5"], ConfigCompositionException, "data.n_trian"),
    ],
)
def test_bad_overrides_fail_at_compose_time(override, error, needle):
    with pytest.raises(error, match=needle.replace(".", r"\.")):
        _compose(*override)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.epochs=0"], "train.epochs"),
        (["train.batch_size=20000"], "train.batch_size"),
        (["reg=l2", "reg.l2=-1"], "reg.l2"),
        (["reg=dropout", "reg.dropout=1.0"], "reg.dropout"),
        (["reg.l2=0.01"], "reg.l2"),  # reg=none with a penalty is a contradiction
    ],
)
def test_values_that_cannot_train_are_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}="):
        validate(_compose(*overrides))


def test_tape_without_penalty_gets_its_own_run_name():
    assert run_name(_compose("loop=tape", "reg=l2", "loop.include_reg_loss=false")) == "tape-l2-large-no_reg_loss"
