"""The config contract: every group option composes; typos and wrong types fail at compose time."""

import itertools
import subprocess
import sys
import textwrap

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from src.core.config import compose_config, group_options, run_name, validate
from src.core.errors import ConfigError
from src.core.regularizers import REGULARIZERS, knobs_on
from src.core.schema import LOOP_SCHEMAS, PROJECT_ROOT

# The tutorial's own sizes and strengths: facts this project reproduces, not a list of options.
TUTORIAL_MODELS = {"tiny": [16], "small": [16, 16], "medium": [64, 64, 64], "large": [512, 512, 512, 512]}
TUTORIAL_REGS = {"none": (0.0, 0.0), "l2": (0.001, 0.0), "dropout": (0.0, 0.5), "l2_dropout": (0.001, 0.5)}
OPTIONS = list(itertools.product(group_options("model"), group_options("reg"), group_options("loop")))


def _compose(*overrides):
    return compose_config(overrides)


def test_defaults_are_the_articles_setup():
    cfg = _compose()
    assert (cfg.model.name, cfg.reg.name, cfg.loop.name, cfg.data.name) == ("large", "none", "fit", "higgs")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate) == (100, 500, 0.001)
    assert (cfg.data.n_validation, cfg.data.n_train, cfg.data.n_features) == (1000, 10000, 28)
    assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and cfg.mlflow.tracking_uri.endswith("/mlruns/mlflow.db")
    assert _compose("loop=tape").loop.include_reg_loss is True


@pytest.mark.parametrize("model,reg,loop", OPTIONS)
def test_every_option_composes_and_validates(model, reg, loop):
    cfg = _compose(f"model={model}", f"reg={reg}", f"loop={loop}", "data=higgs")
    validate(cfg)
    assert run_name(cfg).startswith(f"{loop}-{reg}-{model}")
    # an option's name lists the knobs it switches on
    assert ("_".join(knobs_on(cfg.reg)) or "none") == reg


def test_the_tutorials_models_and_regularizers():
    for model, units in TUTORIAL_MODELS.items():
        assert list(_compose(f"model={model}").model.hidden_units) == units
    for reg, (l2, dropout) in TUTORIAL_REGS.items():
        assert (_compose(f"reg={reg}").reg.l2, _compose(f"reg={reg}").reg.dropout) == (l2, dropout)


def test_every_loop_option_has_a_schema_and_a_function():
    from src.training.loops import LOOPS

    assert set(LOOPS) == set(LOOP_SCHEMAS) == set(group_options("loop"))
    assert set(REGULARIZERS) <= set(_compose().reg) and all("_" not in knob for knob in REGULARIZERS)


def test_a_new_regularizer_is_one_entry_and_one_conf_file(tmp_path):
    """The README's "Extending" claim, done: L1 registered, conf/reg/l1.yaml written, nothing else touched."""
    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(PROJECT_ROOT / "conf"), str(conf)], check=True)
    (conf / "reg" / "l1.yaml").write_text("defaults:\n  - reg_schema\n  - _self_\n\nname: l1\nl1: 0.001\n")
    script = textwrap.dedent(f"""
        import keras
        from src.core import regularizers
        regularizers.REGULARIZERS["l1"] = regularizers.Regularizer(
            lambda v: v >= 0, "must be 0 or positive", kernel_penalty=lambda v: keras.regularizers.L1(v))
        from src.core import config
        from src.core.errors import ConfigError
        from src.training.models import build_model
        config.CONFIG_DIR = __import__("pathlib").Path({str(conf)!r})
        cfg = config.compose_config(["reg=l1", "model=small"])
        config.validate(cfg)
        model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
        assert len(model.losses) == 2, model.losses  # one penalty per hidden layer
        assert config.compose_config(["reg=l2"]).reg.l1 == 0.0  # off in every other option
        try:
            config.validate(config.compose_config(["reg=none", "reg.l1=0.1"]))
        except ConfigError as exc:
            assert str(exc).startswith("reg.l1=0.1: contradicts reg=none"), exc
        else:
            raise AssertionError("reg=none reg.l1=0.1 was accepted")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


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


@pytest.mark.parametrize("added, allowed", [
    ("+train.early_stopping.patiense=2", False),  # a typo in a nested section
    ("+loop.include_reg_loss=false", False),  # fit has no such key; + would add it
    ("+reg.l3=0.1", False),
    ("+optimizer.beta_1=0.8", True),  # a key the optimizer's _target_ (Keras's Adam) takes by name
    ("+optimizer.amsgrad=true", True),
])
def test_keys_added_with_plus_must_be_schema_keys_or_the_targets_arguments(added, allowed):
    cfg = _compose(added)
    if allowed:
        validate(cfg)
    else:
        key = added[1:].split("=")[0]
        with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: no such config key \("):
            validate(cfg)


def test_a_config_pickled_to_a_launchers_job_process_keeps_its_schemas():
    # submitit sends each job its config with cloudpickle: a schema class it cannot name travels by value, without
    # its fields, and the job then refused the config's own keys (`reg.name: no such config key`)
    import cloudpickle

    validate(cloudpickle.loads(cloudpickle.dumps(compose_config(["reg=l2"]))))
