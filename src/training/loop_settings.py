"""What every loop is given besides its own config node: the task, the optimizer, the schedule, who hears each epoch."""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf
from omegaconf import DictConfig

from src.core.schema import LrSchedule
from src.training.monitor import EpochMonitor
from src.training.tasks import Task, task_of

EpochCallback = Callable[[int, Dict[str, float]], Optional[bool]]  # True: stop after this epoch


@dataclass(frozen=True)
class LoopSettings:
    """What every loop takes besides its own config node: where it runs, how long, and who hears each epoch."""

    strategy: tf.distribute.Strategy
    task: Task  # the loss and metrics
    optimizer: Callable[..., keras.optimizers.Optimizer]  # the optimizer option as a partial: given the learning rate
    epochs: int
    steps_per_epoch: int
    learning_rate: float
    lr_schedule: LrSchedule
    lr_decay_epochs: float
    jit_compile: bool
    progress: bool
    on_epoch_end: Sequence[EpochCallback]  # called in order after every epoch
    monitor: EpochMonitor  # the best epoch, its weights, early stopping
    initial_epoch: int = 0  # a resumed run's first epoch (the data stream must start at its first step)
    # puts a resumed run's state into the model and the built optimizer before the first step
    restore: Optional[Callable[[keras.Model, keras.optimizers.Optimizer], None]] = None

    @classmethod
    def from_config(
        cls, cfg: DictConfig, *, strategy: tf.distribute.Strategy, steps_per_epoch: int,
        on_epoch_end: Sequence[EpochCallback] = (), progress: Optional[bool] = None, initial_epoch: int = 0,
        restore: Optional[Callable] = None, monitor: Optional[EpochMonitor] = None,
    ) -> "LoopSettings":
        """The settings a config asks for (`progress` defaults to `not cfg.quiet`, `monitor` to a fresh one)."""
        from hydra.utils import instantiate

        return cls(
            strategy=strategy,
            task=task_of(cfg.task),
            optimizer=instantiate(cfg.optimizer),
            epochs=cfg.train.epochs,
            steps_per_epoch=steps_per_epoch,
            learning_rate=cfg.train.learning_rate,
            lr_schedule=LrSchedule(cfg.train.lr_schedule),
            lr_decay_epochs=cfg.train.lr_decay_epochs,
            jit_compile=cfg.train.jit_compile,
            progress=not cfg.quiet if progress is None else progress,
            on_epoch_end=tuple(on_epoch_end),
            monitor=monitor or EpochMonitor.from_config(cfg.train),
            initial_epoch=initial_epoch,
            restore=restore,
        )


# Most training steps one call into the runtime runs. A call is where Python regains control (a Ctrl-C or
# SIGTERM is raised between calls, not inside one), so a 21,000-step epoch of the full HIGGS must not be one
# call; 50 steps already spread the ~1.5 ms a call costs over the steps to under 0.1 ms each.
MAX_STEPS_PER_CALL = 50


# fit with steps_per_execution > 1 under MirroredStrategy; open since February 2024
KERAS_MULTI_STEP_ISSUE = "keras-team/keras#19246"


def steps_per_call(steps_per_epoch: int) -> int:
    """fit's steps per call into the runtime: the largest divisor of the epoch's steps up to MAX_STEPS_PER_CALL.

    A divisor because fit runs whole executions of `steps_per_execution` steps (another number would train past
    the epoch's end).
    """
    return max(d for d in range(1, min(steps_per_epoch, MAX_STEPS_PER_CALL) + 1) if steps_per_epoch % d == 0)


def make_optimizer(settings: LoopSettings) -> keras.optimizers.Optimizer:
    """The optimizer option's, at a constant rate or on the tutorial's InverseTimeDecay schedule (per step, not
    staircase)."""
    rate = settings.learning_rate
    if settings.lr_schedule == LrSchedule.inverse_time:
        rate = keras.optimizers.schedules.InverseTimeDecay(
            settings.learning_rate, decay_steps=settings.steps_per_epoch * settings.lr_decay_epochs, decay_rate=1,
            staircase=False,
        )
    return settings.optimizer(learning_rate=rate)
