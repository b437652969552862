"""Errors the user can fix; Hydra prints them as one line, without a traceback."""

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """Bad input from the user: config, data file or tracking store."""


class ConfigError(UserError):
    """A config value that composes but makes no sense (e.g. `train.epochs=0`)."""


class DataError(UserError):
    """A data file or download that cannot be read as the UCI HIGGS layout."""


class TrackingError(UserError):
    """The MLflow store or server cannot be used."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the run is stopped at that epoch."""

    def __init__(self, epoch: int, loss: float):
        self.epoch = epoch
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}; "
            "lower train.learning_rate or check the data"
        )
