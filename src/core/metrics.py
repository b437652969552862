"""The names of what every epoch logs, per task, and which logged metrics describe the machine rather than the model.

The Keras objects behind the names are built in `src.training.tasks`; everything that reads a run (compare, plots,
the sweep's best child, the search's objective, early stopping) takes the names from here, by the run's task.
"""

from typing import Dict, Tuple

# task -> its data loss (the Keras name of the loss the task minimizes), then its other metrics
TASK_METRICS: Dict[str, Tuple[str, ...]] = {
    "binary": ("binary_crossentropy", "accuracy", "auc"),
    "multiclass": ("sparse_categorical_crossentropy", "accuracy"),
    "regression": ("mean_squared_error", "mean_absolute_error"),
}
# the metric a task is summarized by besides its data loss (compare's table, the sweep parent's summary)
HEADLINE_METRIC: Dict[str, str] = {"binary": "accuracy", "multiclass": "accuracy", "regression": "mean_absolute_error"}
HIGHER_IS_BETTER = ("accuracy", "val_accuracy", "auc", "val_auc")  # every other epoch metric: lower is better
LEGACY_TASK = "binary"  # the task of runs logged before tasks existed (the tutorial's)


def data_loss(task: str) -> str:
    """The Keras name of the task's data loss, e.g. `binary_crossentropy`: what `loss` is without the penalties."""
    return TASK_METRICS[task][0]


def epoch_metrics(task: str) -> Tuple[str, ...]:
    """Exactly what every epoch of a run of this task logs, in every loop: the losses, each metric and its `val_`
    twin, the regularization penalty, the learning rate and the epoch's wall time."""
    pairs = [name for metric in TASK_METRICS[task] for name in (metric, f"val_{metric}")]
    return ("loss", "val_loss", *pairs, "reg_loss", "learning_rate", "epoch_seconds")


def monitorable(task: str) -> Tuple[str, ...]:
    """What train.early_stopping.monitor and a search's objective may name for this task."""
    return tuple(m for m in epoch_metrics(task) if m not in ("reg_loss", "learning_rate", "epoch_seconds"))


EPOCH_METRICS = epoch_metrics(LEGACY_TASK)  # the tutorial's (binary) epoch metrics

# Metrics about the machine, not the model: MLflow's system metrics and each epoch's wall time, which the runs
# log as `system/epoch_seconds` (the UI's "System metrics" tab). Never reproducible: reproduce and resume skip them.
SYSTEM_PREFIX = "system/"


def store_metric_name(key: str) -> str:
    """The name an epoch metric is logged under in MLflow (the loops' `epoch_seconds` is a system metric)."""
    return SYSTEM_PREFIX + key if key == "epoch_seconds" else key


def is_system_metric(key: str) -> bool:
    """A logged metric about the machine (`epoch_seconds`: how runs before the system/ prefix logged it)."""
    return key.startswith(SYSTEM_PREFIX) or key == "epoch_seconds"
