"""The names of what every epoch logs, and which logged metrics describe the machine rather than the model."""


# Every epoch logs exactly these metrics, for every loop.
EPOCH_METRICS = (
    "loss",
    "val_loss",
    "binary_crossentropy",
    "val_binary_crossentropy",
    "reg_loss",
    "accuracy",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
)


# Metrics about the machine, not the model: MLflow's system metrics and each epoch's wall time, which the runs
# log as `system/epoch_seconds` (the UI's "System metrics" tab). Never reproducible: reproduce and resume skip them.
SYSTEM_PREFIX = "system/"


def store_metric_name(key: str) -> str:
    """The name an epoch metric is logged under in MLflow (the loops' `epoch_seconds` is a system metric)."""
    return SYSTEM_PREFIX + key if key == "epoch_seconds" else key


def is_system_metric(key: str) -> bool:
    """A logged metric about the machine (`epoch_seconds`: how runs before the system/ prefix logged it)."""
    return key.startswith(SYSTEM_PREFIX) or key == "epoch_seconds"


# What train.early_stopping.monitor may name (and which way is better).
HIGHER_IS_BETTER = ("accuracy", "val_accuracy")


MONITORABLE = ("loss", "val_loss", "binary_crossentropy", "val_binary_crossentropy", *HIGHER_IS_BETTER)
