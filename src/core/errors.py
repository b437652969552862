"""Errors the user can fix; Hydra prints them as one line, without a traceback."""

from typing import Optional

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
        self.loss = loss
        super().__init__(
            f"training diverged: loss={loss} at epoch {epoch}; "
            "lower train.learning_rate or check the data"
        )

    def __reduce__(self):
        # Rebuilt from (epoch, loss), so a parallel launcher can send it between processes.
        return type(self), (self.epoch, self.loss)


class JobFailed(UserError):
    """A job of `python -m src.train` whose run ended FAILED; the message is the run's one-line error."""

    def __init__(self, message: str, run_id: Optional[str] = None):
        self.run_id = run_id  # None: the job failed before its run existed (config, data, store)
        super().__init__(message)

    def __reduce__(self):
        # Rebuilt from (message, run_id), so a parallel or remote launcher can send it back to the sweeper.
        return type(self), (str(self), self.run_id)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run, which is now KILLED in MLflow."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"run {run_id} interrupted")

    def __reduce__(self):
        return type(self), (self.run_id,)


def first_line(exc: BaseException) -> str:
    """An exception's first line of text, or its type's name when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def composition_error_line(exc: Exception) -> str:
    """A Hydra composition error (bad override, unknown option) as one line that names the override."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and "/" in (exc.missing_cfg_file or ""):
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = [o for o in exc.options or [] if not o.endswith("_schema")]
        return f"{group}={option}: no such option (available: {', '.join(options)})"
    text = first_line(exc).rstrip(".")
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {text}"
    if exc.__cause__ is not None and str(exc.__cause__).strip():
        text += ": " + str(exc.__cause__).strip().splitlines()[0]
    return text
