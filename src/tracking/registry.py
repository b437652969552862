"""The model registry: a sweep's or search's best model registered under the experiment's name, alias `best`."""

import logging
from typing import Optional

from src.tracking.models import BEST, FINAL, logged_model_uri
from src.tracking.store import client

log = logging.getLogger(__name__)

BEST_ALIAS = "best"


def register_best(tracking_uri: str, run_id: str, name: str, *, why: str) -> Optional[str]:
    """Register run `run_id`'s best model (its final one if it has none) as a version of the registered model
    `name` and point the alias `best` at it, unless it already does; `why` becomes the version's description.
    The version's `models:/` URI, or None (and a warning) when the run logged no model."""
    import mlflow

    mlflow_client = client(tracking_uri)
    model_uri = logged_model_uri(mlflow_client, run_id, BEST) or logged_model_uri(mlflow_client, run_id, FINAL)
    if model_uri is None:
        log.warning("mlflow.register_best: run %s logged no model (mlflow.log_models=false?): nothing registered",
                    run_id)
        return None
    try:
        current = mlflow_client.get_model_version_by_alias(name, BEST_ALIAS)
    except Exception:  # no such registered model or alias yet
        current = None
    if current is not None and current.source == model_uri:  # a continued search whose best did not change
        return f"models:/{name}@{BEST_ALIAS}"
    mlflow.set_tracking_uri(tracking_uri)  # register_model goes through the fluent registry client
    version = mlflow.register_model(model_uri, name)
    mlflow_client.update_model_version(name, version.version, description=why)
    mlflow_client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return f"models:/{name}@{BEST_ALIAS}"
