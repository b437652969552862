"""The best epoch of the monitored metric, its weights, and early stopping: one object both loops consult alike."""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from omegaconf import DictConfig

from src.core.metrics import HIGHER_IS_BETTER

Weights = List  # model.get_weights(): a list of numpy arrays


@dataclass
class EpochMonitor:
    """Follows `metric` epoch by epoch (as Keras's EarlyStopping does), keeping the best epoch's weights.

    `patience` None never stops. An epoch improves on the best when it beats it by more than
    `min_delta`; after `patience` epochs in a row without one, `update` says stop.
    """

    metric: str
    patience: Optional[int]
    min_delta: float
    restore_best: bool
    best: float = math.nan
    best_epoch: Optional[int] = None
    best_weights: Optional[Weights] = field(default=None, repr=False)
    wait: int = 0
    stopped_epoch: Optional[int] = None  # the epoch after which training stopped early

    @classmethod
    def from_config(cls, train: DictConfig) -> "EpochMonitor":
        stopping = train.early_stopping
        return cls(stopping.monitor, stopping.patience if stopping.enabled else None, stopping.min_delta,
                   stopping.enabled and stopping.restore_best)

    def improves(self, value: float) -> bool:
        if self.best_epoch is None:
            return math.isfinite(value)
        if self.metric in HIGHER_IS_BETTER:
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def update(self, epoch: int, metrics: Dict[str, float], weights: Callable[[], Weights]) -> bool:
        """Take one epoch's metrics (and the model's weights, if it is the best yet); whether training should stop."""
        value = metrics[self.metric]
        if self.improves(value):
            self.best, self.best_epoch, self.best_weights, self.wait = value, epoch, weights(), 0
            return False
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False
