"""Logged models (final and best) named after their run, described, that load by run ID and score as the run said; early stopping and the schedule, alike in both loops."""

import math

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from src.core.errors import ConfigError
from src.core.metrics import EPOCH_METRICS
from src.data.higgs import load_higgs
from src.experiments.train import train
from src.tracking.models import logged_model_uri
from src.training.monitor import EpochMonitor

STOPPING = ["train.epochs=12", "train.early_stopping.enabled=true", "train.early_stopping.patience=2",
            "train.early_stopping.min_delta=0.004", "train.lr_schedule=inverse_time", "train.lr_decay_epochs=2",
            "mlflow.log_models=true"]


def _histories(client, run_id):
    return {key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in EPOCH_METRICS if key != "epoch_seconds"}


def _accuracy(model_uri, splits) -> float:
    probability = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(np.asarray(splits.x_val))).reshape(-1, 1)
    correct = np.sum((probability > 0.5).astype(np.float32) == splits.y_val)
    return float(np.float32(correct) / np.float32(len(probability)))  # as Keras's float32 metric divides


def test_both_loops_stop_alike_and_their_logged_models_score_as_the_runs_said(make_cfg, tracking_uri):
    fit_cfg = make_cfg("loop=fit", *STOPPING)
    tape_cfg = make_cfg("loop=tape", *STOPPING, "train.early_stopping.restore_best=true")
    fit, tape = train(fit_cfg), train(tape_cfg)
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    fit_history, tape_history = _histories(client, fit.run_id), _histories(client, tape.run_id)

    # the twins stop after the same epoch with bit-identical metrics, the schedule's rate among them
    assert fit_history == tape_history
    epochs = len(fit_history["loss"])
    assert 2 < epochs < 12, "early stopping did not stop early (or stopped at once)"
    steps = 2000 // 500
    expected_rates = [1e-3 / (1 + (e + 1) * steps / (steps * 2)) for e in range(epochs)]
    assert fit_history["learning_rate"] == pytest.approx(expected_rates, rel=1e-6)
    fit_tags, tape_tags = client.get_run(fit.run_id).data.tags, client.get_run(tape.run_id).data.tags
    assert fit_tags["stopped_epoch"] == tape_tags["stopped_epoch"] == str(epochs - 1)
    best = int(fit_tags["best_epoch"])
    val_bce = fit_history["val_binary_crossentropy"]
    expected_best = 0  # the last epoch that beat the best so far by more than min_delta
    for epoch, value in enumerate(val_bce):
        if value + 0.004 < val_bce[expected_best]:
            expected_best = epoch
    assert best == expected_best and fit_tags["best_value"] == repr(val_bce[best])
    assert epochs - 1 - best == 2  # patience

    # the logged models are named after their run and load by run ID (and name) or by their role, giving exactly
    # the run's validation accuracy
    splits = load_higgs(fit_cfg.data)
    assert (fit.run_name, tape.run_name) == ("fit-none-tiny", "tape-none-tiny")
    assert _accuracy(f"runs:/{fit.run_id}/fit-none-tiny", splits) == fit_history["val_accuracy"][-1]
    assert _accuracy(f"runs:/{fit.run_id}/fit-none-tiny-best", splits) == fit_history["val_accuracy"][best]
    assert _accuracy(logged_model_uri(client, fit.run_id, "best_model"), splits) == fit_history["val_accuracy"][best]
    # restore_best: the tape run ended with its best epoch's weights, so its final model is that epoch's
    assert _accuracy(logged_model_uri(client, tape.run_id, "model"), splits) == tape_history["val_accuracy"][best]
    logged = client.search_logged_models(experiment_ids=[client.get_run(fit.run_id).info.experiment_id])
    mine = {m.tags["logged_as"]: m for m in logged if m.source_run_id == fit.run_id}
    assert {role: (m.name, m.tags.get("best_epoch")) for role, m in mine.items()} == {
        "best_model": ("fit-none-tiny-best", str(best)), "model": ("fit-none-tiny", None)}
    # each says in its description (the UI's, on the model's page) its run, its weights and their epoch
    link = f"[fit-none-tiny](#/experiments/{client.get_run(fit.run_id).info.experiment_id}/runs/{fit.run_id})"
    assert mine["model"].tags["mlflow.note.content"].startswith(
        f"The final model of run {link}: the weights of epoch {epochs - 1}, the last (epochs count from 0")
    assert mine["best_model"].tags["mlflow.note.content"].startswith(
        f"The best model of run {link}: the weights of epoch {best}, the best by val_binary_crossentropy")
    (tape_final,) = [m for m in logged if m.source_run_id == tape.run_id and m.tags["logged_as"] == "model"]
    assert f"the weights of epoch {best}, the best by val_binary_crossentropy, restored when training ended" in \
        tape_final.tags["mlflow.note.content"]
    # in MLflow's Keras 3 flavor, with a signature (28 float32 features -> one probability) and an input example
    info = mlflow.models.get_model_info(f"runs:/{fit.run_id}/fit-none-tiny")
    assert "keras" in info.flavors and info.flavors["keras"]["keras_version"] == keras.__version__
    assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 28)}}]
    assert info.signature.outputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1)}}]
    local = mlflow.artifacts.download_artifacts(f"runs:/{fit.run_id}/fit-none-tiny")
    example = np.asarray(mlflow.models.Model.load(local).load_input_example(local))
    assert example.shape[1:] == (28,) and np.array_equal(example, np.asarray(splits.x_val[:len(example)]))


def test_the_monitor_follows_keras_early_stopping():
    weights = iter(range(100))
    lower = EpochMonitor("val_loss", patience=2, min_delta=0.1, restore_best=False)
    stops = [lower.update(e, {"val_loss": v}, lambda: next(weights)) for e, v in enumerate([1.0, 0.95, 0.85, 0.8, 0.9])]
    assert stops == [False, False, False, False, True]  # 0.95 is not 0.1 better than 1.0; 0.85 is
    assert (lower.best_epoch, lower.best, lower.stopped_epoch) == (2, 0.85, 4)
    higher = EpochMonitor("val_accuracy", patience=None, min_delta=0.0, restore_best=False)
    for e, v in enumerate([math.nan, 0.6, 0.7, 0.65]):
        assert higher.update(e, {"val_accuracy": v}, lambda: None) is False  # never stops without patience
    assert (higher.best_epoch, higher.best) == (2, 0.7)


@pytest.mark.parametrize(
    "override, message",
    [("train.early_stopping.monitor=epoch_seconds", "train.early_stopping.monitor=epoch_seconds: must be one of loss, "),
     ("train.lr_decay_epochs=0", "train.lr_decay_epochs=0.0: must be positive"),
     ("train.early_stopping.patience=-1", "train.early_stopping.patience=-1: must be 0 or more")],
)
def test_bad_stopping_or_schedule_is_one_line(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        train(make_cfg(override))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("name, keras_model_name", [
    ("small", "small"),
    ("my net", "my_net"),  # a valid option name that TensorFlow's scope pattern refuses
    ("n-${oc.env:AWS_SECRET_ACCESS_KEY}", "n-___"),  # the secret masked: the name is saved with the model
    ("${oc.env:AWS_SECRET_ACCESS_KEY}", "model___"),
])
def test_a_models_name_is_any_option_name_masked(monkeypatch, name, keras_model_name):
    from omegaconf import OmegaConf

    from src.training.models import build_model

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Zq7SECRETvalue")
    model = OmegaConf.create({"_target_": "src.training.models.dense", "name": name, "hidden_units": [4],
                              "activation": "elu"})
    reg = OmegaConf.create({"name": "none", "l2": 0.0, "dropout": 0.0})
    assert build_model(model, reg, 28).name == keras_model_name
