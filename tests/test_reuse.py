"""A job that trains on the compiled model an earlier job of the process left (src.training.reuse) computes exactly
what a fresh process computes, and only a job with the same graph gets one."""

import pytest

from src.experiments.train import train
from src.training import reuse


@pytest.fixture(autouse=True)
def nothing_kept():
    reuse.forget()
    yield
    reuse.forget()


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_a_kept_model_trains_bit_identical_to_a_fresh_one(make_cfg, loop):
    # dropout (its random generator's state) and L2 (the penalty in the graph), with the tape loop adding it
    overrides = [f"loop={loop}", "reg=l2_dropout", *(["loop.include_reg_loss=true"] if loop == "tape" else [])]
    fresh = train(make_cfg(*overrides, "seed=1")).history

    reuse.forget()
    train(make_cfg(*overrides, "seed=0", "train.epochs=3"))  # another seed and length: the same graph
    (kept,) = reuse._kept.values()
    again = train(make_cfg(*overrides, "seed=1")).history
    assert list(reuse._kept.values()) == [kept]  # the second job trained on the first's model (a fresh one is kept else)

    for key in fresh:
        if key != "epoch_seconds":
            assert again[key] == fresh[key], key  # to the last bit, every epoch


def test_only_a_job_with_the_same_graph_shares_a_model(make_cfg):
    from src.data.loading import load_data

    def key(*overrides):
        cfg = make_cfg(*overrides)
        import tensorflow as tf

        splits = load_data(cfg.data, progress=False)
        return reuse.graph_key(cfg, splits, len(splits.x_train) // cfg.train.batch_size, tf.distribute.get_strategy())

    same = key()
    assert key("seed=7", "train.epochs=5", "train.checkpoint_every=1", "mlflow.experiment_name=other") == same
    for changed in ("reg=l2", "reg=dropout", "loop=tape", "model=small", "train.batch_size=250",
                    "train.learning_rate=0.01", "optimizer=sgd", "data.n_train=1500"):
        assert key(changed) != same, changed
    # the L2 factor is a variable of the graph: a search's trials over reg.l2 share one, none and l2 do not
    assert key("reg=l2", "reg.l2=0.003") == key("reg=l2") != same
    assert key("train.reuse_compiled=false") is None


def test_a_search_over_l2_shares_one_graph_and_each_trial_gets_its_own_penalty(make_cfg):
    fresh = train(make_cfg("reg=l2", "reg.l2=0.01")).history
    reuse.forget()
    train(make_cfg("reg=l2", "reg.l2=0.0001"))
    (kept,) = reuse._kept.values()
    again = train(make_cfg("reg=l2", "reg.l2=0.01")).history
    assert list(reuse._kept.values()) == [kept]
    assert again["reg_loss"] == fresh["reg_loss"] and again["val_loss"] == fresh["val_loss"]


def test_a_failed_job_leaves_no_model_for_the_next(make_cfg):
    result = train(make_cfg("train.learning_rate=1e30"))  # diverges: the run ends FAILED
    assert result.status == "FAILED"
    assert not reuse._kept


def test_a_model_drawing_from_tensorflows_global_seed_is_never_kept():
    # a user's layer with an unseeded tf.random op: its seed is fixed when the graph is traced, so a reused graph
    # would give every seed the first one's noise; such a model trains fresh in every job
    import keras
    import numpy as np
    import tensorflow as tf

    class Noise(keras.layers.Layer):
        def call(self, x, training=False):
            return x + tf.random.normal(tf.shape(x)) if training else x

    example = np.zeros((1, 28), np.float32)
    noisy = keras.Sequential([keras.Input((28,)), Noise(), keras.layers.Dense(1)])
    reuse.keep("noisy", noisy, example)
    assert not reuse._kept
    # Keras's own dropout and noise layers draw from seed generators, whose state each job's fresh model brings
    seeded = keras.Sequential([keras.Input((28,)), keras.layers.GaussianNoise(0.1), keras.layers.Dropout(0.5),
                               keras.layers.Dense(1)])
    reuse.keep("seeded", seeded, example)
    assert list(reuse._kept) == ["seeded"]


def test_the_l2_penalty_saves_as_a_plain_l2_with_its_number():
    import keras

    from src.core.regularizers import REGULARIZERS

    penalty = REGULARIZERS["l2"].kernel_penalty(0.001)
    assert isinstance(penalty.l2, keras.Variable)  # in the graph as a variable, so trials over reg.l2 share it
    saved = keras.saving.serialize_keras_object(penalty)
    assert saved["class_name"] == "L2" and saved["config"] == {"l2": 0.001}  # loads anywhere, no class of ours
    assert keras.regularizers.get(saved).l2 == 0.001
