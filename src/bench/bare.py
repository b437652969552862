"""The script a user would write by hand, timed beside the project's loops: a bare Keras `fit` and a bare compiled
`tf.GradientTape` loop of the same model, data and seed, in the same process, with no tracking at all."""

import statistics
import time
from typing import Any, Dict, List


def _tutorial_batches(x, y, batch_size: int, seed: int):
    """The tutorial's pipeline: shuffle all rows, repeat, batch."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat().batch(batch_size)


def measure_bare(cfg, warmup: int, epochs: int, loop: str) -> Dict[str, Any]:
    """Epoch seconds (and their median after `warmup`) of a bare `fit` (`loop="fit"`, with steps_per_execution, as a
    careful user sets it) or a bare compiled tape loop (`loop="tape"`, one tf.function step a batch)."""
    import keras
    import tensorflow as tf

    from src.data.loading import load_data
    from src.training.loop_settings import steps_per_call
    from src.training.models import build_model

    splits = load_data(cfg.data, progress=False)
    batch, steps = cfg.train.batch_size, len(splits.x_train) // cfg.train.batch_size
    val = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch).cache()

    def fresh_model():
        keras.utils.set_random_seed(cfg.seed)
        return build_model(cfg.model, cfg.reg, splits.x_train.shape[1:], 1)

    def metrics():
        return [keras.metrics.BinaryCrossentropy(from_logits=True), keras.metrics.BinaryAccuracy(threshold=0.0),
                keras.metrics.AUC(from_logits=True, name="auc")]

    model = fresh_model()
    if loop == "tape":
        return _bare_tape(model, cfg, splits, val, metrics, warmup, epochs, steps)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), metrics=metrics(),
                  steps_per_execution=steps_per_call(steps))
    times: List[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    model.fit(_tutorial_batches(splits.x_train, splits.y_train, batch, cfg.seed), steps_per_epoch=steps,
              epochs=warmup + epochs, validation_data=val, callbacks=[Timer()], verbose=0)
    return {"epoch_seconds": times, "median_epoch_seconds": statistics.median(times[warmup:])}


def _bare_tape(model, cfg, splits, val, metrics, warmup: int, epochs: int, steps: int) -> Dict[str, Any]:
    """The tape loop a user writes: a compiled step per batch, the epoch's batches from one iterator."""
    import keras
    import tensorflow as tf

    batch = cfg.train.batch_size
    optimizer = keras.optimizers.Adam(cfg.train.learning_rate)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
    train_metrics, val_metrics = metrics(), metrics()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits) + tf.add_n(model.losses) if model.losses else loss_fn(y, logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        for metric in train_metrics:
            metric.update_state(y, logits)

    @tf.function
    def test_step(x, y):
        logits = model(x, training=False)
        for metric in val_metrics:
            metric.update_state(y, logits)

    batches = iter(_tutorial_batches(splits.x_train, splits.y_train, batch, cfg.seed))
    times = []
    for _ in range(warmup + epochs):
        started = time.perf_counter()
        for metric in (*train_metrics, *val_metrics):
            metric.reset_state()
        for _ in range(steps):
            train_step(*next(batches))
        for x, y in val:
            test_step(x, y)
        [float(metric.result()) for metric in (*train_metrics, *val_metrics)]
        times.append(time.perf_counter() - started)
    return {"epoch_seconds": times, "median_epoch_seconds": statistics.median(times[warmup:])}
