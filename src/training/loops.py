"""The training loops, one registered function each: Keras `model.fit`, and a `tf.GradientTape` loop that is its twin.

Every loop trains on the same data stream, logs the same per-epoch metrics and calls each
of `settings.on_epoch_end` with `(epoch, metrics)` after every epoch, so the tracker and
the plots never need to know which loop ran; a callback that returns True ends training after
that epoch, as early stopping does (a search's pruner). A new loop is one function here, decorated
with `@loop("<option>")`, plus `conf/loop/<option>.yaml`.
"""

import logging
import math
import time
from typing import Callable, Dict

import keras
import tensorflow as tf
from omegaconf import DictConfig
from tqdm.auto import tqdm

from src.core.errors import NonFiniteLossError
from src.core.metrics import epoch_metrics
from src.training.loop_settings import (
    MAX_STEPS_PER_CALL,
    LoopSettings,
    make_optimizer,
    steps_per_call,
)
from src.training.programs import TAPE_PROGRAM, TapeProgram, remember_optimizer, reset_optimizer

log = logging.getLogger(__name__)
# Epoch summaries go to the job log file only (conf/config.yaml routes this
# logger); the console already shows them in the progress bars.
epoch_log = logging.getLogger("src.epochs")


Loop = Callable[[keras.Model, tf.data.Dataset, tf.data.Dataset, DictConfig, LoopSettings], None]
LOOPS: Dict[str, Loop] = {}  # loop option -> its function


def loop(option: str) -> Callable[[Loop], Loop]:
    """Register a loop function under its `loop` option name."""

    def register(function: Loop) -> Loop:
        LOOPS[option] = function
        return function

    return register


def regularization_loss(model: keras.Model) -> float:
    """`sum(model.losses)` now: the penalty the layers' regularizers ask for."""
    return float(sum(float(loss) for loss in model.losses))


def _finish_epoch(
    epoch: int, metrics: Dict[str, float], model: keras.Model, optimizer: keras.optimizers.Optimizer,
    settings: LoopSettings,
) -> bool:
    """Complete, log and hand on one epoch's metrics; whether training should stop early."""
    metrics["reg_loss"] = regularization_loss(model)
    # the rate after the epoch's last step (a MirroredVariable under a strategy: read as a tensor)
    metrics["learning_rate"] = float(tf.convert_to_tensor(optimizer.learning_rate))
    logged = {key: metrics[key] for key in epoch_metrics(settings.task.name)}
    shown = " ".join(f"{key}={value:.4f}" for key, value in logged.items()
                     if key not in ("reg_loss", "learning_rate", "epoch_seconds"))
    epoch_log.info("epoch %d: %s (%.2fs)", epoch, shown, metrics["epoch_seconds"])
    stop = settings.monitor.update(epoch, logged, model.get_weights)  # first: a checkpoint callback saves it
    for callback in settings.on_epoch_end:
        if callback(epoch, logged) is True:  # a callback may end training after this epoch (a pruned trial)
            stop = True
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLossError(epoch, metrics["loss"])
    return stop


def _end_training(model: keras.Model, settings: LoopSettings) -> None:
    """What every loop does after its last epoch: restore the best epoch's weights if asked to."""
    monitor = settings.monitor
    if monitor.restore_best and monitor.best_weights is not None:
        model.set_weights(monitor.best_weights)


class _EpochReporter(keras.callbacks.Callback):
    """Turns `fit`'s epoch logs into the shared metric dict."""

    def __init__(self, settings: LoopSettings):
        super().__init__()
        self._settings = settings
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics["epoch_seconds"] = time.perf_counter() - self._started
        if _finish_epoch(epoch, metrics, self.model, self.model.optimizer, self._settings):
            self.model.stop_training = True


@loop("fit")
def run_fit(
    model: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, cfg: DictConfig, settings: LoopSettings
) -> None:
    """Keras `model.fit`, which adds `sum(model.losses)` to the objective by itself."""
    replicas = settings.strategy.num_replicas_in_sync
    with settings.strategy.scope():
        if not reset_optimizer(model):  # a model an earlier job compiled (src.training.reuse) keeps its traces
            model.compile(
                optimizer=make_optimizer(settings),
                loss=settings.task.loss(),
                metrics=settings.task.metrics(),
                jit_compile=settings.jit_compile,
                # many steps per call into the runtime (a tf.while_loop over the iterator): Keras's per-step Python
                # work and host syncs were a tenth of fit's epoch. Not with several replicas: Keras's multi-step
                # function then fails ("You must feed a value for placeholder tensor", KERAS_MULTI_STEP_ISSUE); the
                # tape loop's own multi-step function does not.
                steps_per_execution=steps_per_call(settings.steps_per_epoch) if replicas == 1 else 1,
            )
            model.optimizer.build(model.trainable_variables)  # fit would build it at the first step, as zeros
            remember_optimizer(model, model.optimizer)
        if settings.restore is not None:
            settings.restore(model, model.optimizer)
    model.fit(
        train_ds,
        initial_epoch=settings.initial_epoch,
        epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch,
        validation_data=val_ds,
        callbacks=[_EpochReporter(settings)],
        verbose=1 if settings.progress else 0,
        shuffle=False,  # train_ds is already shuffled with the configured seed
    )
    _end_training(model, settings)


@loop("tape")
def run_tape(
    model: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, cfg: DictConfig, settings: LoopSettings
) -> None:
    """A `tf.GradientTape` loop doing what `fit` does, step for step.

    Differences from the article's loop, each of which makes it `fit`'s twin:
    exactly `steps_per_epoch` steps per epoch from one persistent iterator;
    train metrics from the training-mode forward pass before the update;
    accuracy thresholded at logit 0; and compiled with `tf.function`, many steps per call.
    """
    strategy = settings.strategy
    program = getattr(model, TAPE_PROGRAM, None)
    if program is None or not reset_optimizer(model):  # a kept model (src.training.reuse) keeps its traces
        program = TapeProgram.build(model, cfg, settings)
        setattr(model, TAPE_PROGRAM, program)
    optimizer, train_steps = program.optimizer, program.train_steps
    train_loss, val_loss, train_metrics, val_metrics = program.metrics
    distributed_train_step, distributed_test_step = program.train_step, program.test_step
    if settings.restore is not None:
        with strategy.scope():
            settings.restore(model, optimizer)
    multi_step = cfg.compile
    per_call = MAX_STEPS_PER_CALL if multi_step else 1

    model.optimizer = optimizer  # where fit keeps it, so epoch callbacks (a checkpoint) find it alike
    # Every global batch is cut into per-replica shares by position, and across workers each keeps its
    # replicas' shares (DATA sharding): worker i feeds what replica i of a one-machine MirroredStrategy would,
    # so compute_average_loss divides by the same global batch. (AUTO would first try to shard by file.)
    by_position = tf.data.Options()
    by_position.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # One iterator for the whole run, as fit keeps with steps_per_epoch.
    iterator = iter(strategy.experimental_distribute_dataset(train_ds.with_options(by_position)))
    val_batches = strategy.experimental_distribute_dataset(val_ds.with_options(by_position))
    bar = tqdm(total=settings.epochs, initial=settings.initial_epoch, unit="epoch", disable=not settings.progress,
               desc=model.name)
    try:
        for epoch in range(settings.initial_epoch, settings.epochs):
            started = time.perf_counter()
            for metric in (train_loss, val_loss, *train_metrics, *val_metrics):
                metric.reset_state()
            for first in range(0, settings.steps_per_epoch, per_call):
                if multi_step:  # the count as a tensor: one trace for every count
                    train_steps(iterator, tf.constant(min(per_call, settings.steps_per_epoch - first)))
                else:
                    x, y = next(iterator)
                    distributed_train_step(x, y)
            for x, y in val_batches:
                distributed_test_step(x, y)
            metrics = {train_loss.name: train_loss.result(), val_loss.name: val_loss.result()}
            metrics.update({m.name: m.result() for m in train_metrics})
            metrics.update({f"val_{m.name}": m.result() for m in val_metrics})
            metrics = {key: float(value) for key, value in metrics.items()}
            metrics["epoch_seconds"] = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", val_loss=f"{metrics['val_loss']:.4f}")
            if _finish_epoch(epoch, metrics, model, optimizer, settings):
                break
    finally:
        bar.close()
    _end_training(model, settings)

