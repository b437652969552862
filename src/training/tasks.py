"""The tasks a run can learn, each its loss on the model's outputs, its metrics and its outputs' meaning.

The metric names are `src.core.metrics.TASK_METRICS`; the Keras objects behind them are made here, fresh for every
loop and pass (a metric object keeps state), identically for `fit` and the tape loop.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import keras
import numpy as np

from src.core.errors import DataError
from src.core.metrics import TASK_METRICS


@dataclass(frozen=True)
class Task:
    """One task: its loss (on logits, or raw values), its metrics, how many outputs it needs, how it scores."""

    name: str
    make_loss: Callable[..., keras.losses.Loss]  # make_loss(reduction=...) for the tape loop's per-example loss
    make_metrics: Callable[[], List[keras.metrics.Metric]]
    output_activation: Optional[str]  # what the logged model puts on the logits: sigmoid, softmax or nothing

    def loss(self, **kwargs) -> keras.losses.Loss:
        return self.make_loss(**kwargs)

    def metrics(self) -> List[keras.metrics.Metric]:
        made = self.make_metrics()
        assert tuple(m.name for m in made) == TASK_METRICS[self.name], "core.metrics.TASK_METRICS names them"
        return made

    def n_outputs(self, y_train: np.ndarray, y_val: np.ndarray) -> int:
        """The model's output units: one, or one per class (labels 0..K-1) for multiclass; DataError for labels the
        task cannot learn (binary: 0 or 1 only: a continuous target is a regression)."""
        if self.name == "binary":
            for split, y in (("training", y_train), ("validation", y_val)):
                if not ((y == 0) | (y == 1)).all():
                    raise DataError(f"task=binary: the {split} labels must be 0 or 1 (a continuous target: task=regression,"
                                    " class numbers: task=multiclass)")
        if self.name != "multiclass":
            return 1
        labels = np.concatenate([np.unique(y_train), np.unique(y_val)])
        if not np.all(labels == np.round(labels)) or labels.min() < 0:
            raise DataError("task=multiclass: the labels must be the class numbers 0, 1, ..., K-1")
        return int(labels.max()) + 1


def _binary_metrics() -> list:
    return [
        keras.metrics.BinaryCrossentropy(name="binary_crossentropy", from_logits=True),
        # The model outputs logits: p = 0.5 is logit 0. Keras's default 0.5 would be p = 0.62.
        keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0),
        keras.metrics.AUC(name="auc", from_logits=True),
    ]


def _multiclass_metrics() -> list:
    return [
        keras.metrics.SparseCategoricalCrossentropy(name="sparse_categorical_crossentropy", from_logits=True),
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
    ]


def _regression_metrics() -> list:
    return [keras.metrics.MeanSquaredError(name="mean_squared_error"),
            keras.metrics.MeanAbsoluteError(name="mean_absolute_error")]


TASKS: Dict[str, Task] = {
    "binary": Task("binary", lambda **kw: keras.losses.BinaryCrossentropy(from_logits=True, **kw), _binary_metrics,
                   "sigmoid"),
    "multiclass": Task("multiclass", lambda **kw: keras.losses.SparseCategoricalCrossentropy(from_logits=True, **kw),
                       _multiclass_metrics, "softmax"),
    "regression": Task("regression", lambda **kw: keras.losses.MeanSquaredError(**kw), _regression_metrics, None),
}


def task_of(name) -> Task:
    """The task a config names (`task`: an enum or its name)."""
    return TASKS[getattr(name, "value", name)]
