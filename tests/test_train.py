"""Training into MLflow: the logged metrics mean what their names say, for both loops and every regularizer."""


import numpy as np
import pytest
import tensorflow as tf
from mlflow import MlflowClient

from src.core.config import group_options
from src.core.metrics import EPOCH_METRICS, store_metric_name
from src.core.regularizers import REGULARIZERS, knobs_on
from src.data.higgs import load_higgs
from src.data.pipeline import make_datasets
from src.experiments.train import train
from src.training import loops, runtime
from src.training.loop_settings import LoopSettings
from src.training.models import build_model

REGS = group_options("reg")


def _history(client, run_id):
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, store_metric_name(key)),
                                                key=lambda m: m.step)]
        for key in EPOCH_METRICS
    }


@pytest.mark.parametrize("loop", group_options("loop"))
@pytest.mark.parametrize("reg", REGS)
def test_metrics_logged_per_epoch_with_consistent_meaning(make_cfg, tracking_uri, loop, reg):
    cfg = make_cfg(f"loop={loop}", f"reg={reg}", "model=small")
    penalized = any(REGULARIZERS[knob].kernel_penalty for knob in knobs_on(cfg.reg))
    result = train(cfg)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"{loop}-{reg}-small"
    history = _history(client, result.run_id)
    for key, points in history.items():
        assert [step for step, _ in points] == [0, 1], key
    last = {key: points[-1][1] for key, points in history.items()}
    if penalized:
        assert last["reg_loss"] > 0
        # Validation runs after the epoch's last update, so its penalty is exactly the epoch-end reg_loss.
        assert last["val_loss"] - last["val_binary_crossentropy"] == pytest.approx(last["reg_loss"], rel=1e-4)
        # Training loss averages the penalty over the epoch's steps; it shrinks a little as weights move.
        assert last["loss"] - last["binary_crossentropy"] == pytest.approx(last["reg_loss"], rel=0.05)
    else:
        assert last["reg_loss"] == 0
        assert last["loss"] == pytest.approx(last["binary_crossentropy"], abs=1e-6)
        assert last["val_loss"] == pytest.approx(last["val_binary_crossentropy"], abs=1e-6)
    assert 0 <= last["accuracy"] <= 1 and 0 <= last["val_accuracy"] <= 1
    params = run.data.params
    assert params["loop.name"] == loop and params["reg.name"] == reg and params["train.epochs"] == "2"
    assert "mlflow.tracking_uri" not in params
    assert run.data.tags["mlflow.source.git.commit"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.yaml" in artifacts
    curves = {a.path for a in client.list_artifacts(result.run_id, "curves")}
    assert curves == {"curves/loss.png", "curves/accuracy.png"}
    assert {"curves_loss.png", "curves_accuracy.png"} <= artifacts  # at the root, for MLflow's compare page
    # the dataset panel's digest is the whole data's: the start of data_sha256, not MLflow's first-rows hash
    assert len(run.inputs.dataset_inputs) == 2
    assert {d.dataset.digest for d in run.inputs.dataset_inputs} == {run.data.tags["data_sha256"][:16]}


def test_tape_without_reg_loss_ignores_the_penalty(make_cfg, tracking_uri):
    result = train(make_cfg("loop=tape", "reg=l2", "loop.include_reg_loss=false"))
    history = _history(MlflowClient(tracking_uri), result.run_id)
    last = {key: points[-1][1] for key, points in history.items()}
    assert last["reg_loss"] > 0  # the layers still carry the penalty...
    assert last["loss"] == pytest.approx(last["binary_crossentropy"], abs=1e-6)  # ...but nothing minimizes it


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_accuracy_thresholds_logits_at_zero(make_cfg, loop):
    cfg = make_cfg(f"loop={loop}", "model=tiny", "train.epochs=1")
    splits = load_higgs(cfg.data)
    runtime.seed_everything(cfg.seed)
    train_ds, val_ds = make_datasets(splits, cfg.train.batch_size, cfg.seed)
    model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
    logged = {}
    settings = LoopSettings.from_config(
        cfg, strategy=tf.distribute.get_strategy(), steps_per_epoch=cfg.data.n_train // cfg.train.batch_size,
        on_epoch_end=[lambda epoch, m: logged.update(m)],
    )
    loops.LOOPS[loop](model, train_ds, val_ds, cfg.loop, settings)
    logits = model.predict(splits.x_val, verbose=0)
    expected = np.mean((logits > 0).astype(np.float32) == splits.y_val)
    assert logged["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    # Keras's default threshold of 0.5 on logits would count differently on this model.
    assert expected != pytest.approx(np.mean((logits > 0.5).astype(np.float32) == splits.y_val), abs=1e-6)
