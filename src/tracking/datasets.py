"""A run's datasets in MLflow: their source, and their logging as run inputs (safe when parallel jobs race)."""

import time
from typing import Any, Dict

from src.core import compat
from src.core.redaction import redact

SPLITS = (("training", "train"), ("validation", "val"))  # MLflow's dataset context, the dataset name's suffix
# the UI's dataset panel shows this much of the whole-data sha256 (MLflow allows 36 characters; its own digest hashes
# only the first 10,000 values, so two training sets that differ further on would show the same one)
DATASET_DIGEST_CHARS = 16


def shown_digest(sha256: str) -> str:
    """The digest a dataset shows in the UI: the start of the sha256 of all its values (the run's data_sha256)."""
    return sha256[:DATASET_DIGEST_CHARS]


def split_datasets(splits) -> Dict[str, Any]:
    """The training and validation rows as MLflow datasets (context -> dataset), both showing the digest of every
    value of both splits: the start of the run's data_sha256 tag."""
    import mlflow.data

    source, digest = dataset_source(splits.source), shown_digest(splits.digest())
    arrays = {"training": (splits.x_train, splits.y_train), "validation": (splits.x_val, splits.y_val)}
    return {
        context: mlflow.data.from_numpy(x, targets=y, source=source, name=redact(f"{splits.name}-{suffix}"),
                                        digest=digest)
        for context, suffix in SPLITS
        for x, y in [arrays[context]]
    }


def dataset_source(location: str):
    """The MLflow dataset source of a URL or a local path, picked without guessing."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if location.startswith(("http://", "https://")):
        return HTTPDatasetSource(redact(location))
    return compat.local_dataset_source(location)


# How each database reports the insert that lost a race on a unique key: SQLite, PostgreSQL (through an MLflow
# server: "BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value ..."), MySQL
UNIQUE_KEY_RACE = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "Duplicate entry")


def log_datasets(mlflow_client, run_id: str, datasets: Dict[str, Any]) -> None:
    """Each dataset (context -> mlflow.data dataset) with its digest, as a run input."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [
        DatasetInput(compat.dataset_entity(dataset), tags=[InputTag("mlflow.data.context", context)])
        for context, dataset in datasets.items()
    ]
    for attempt in range(5):
        try:
            mlflow_client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:
            # Parallel jobs log the same dataset: the store looks it up, misses, and
            # inserts, so two jobs can race on its unique key. Once the other job's
            # insert has landed, a retry finds the dataset and only links it.
            if not any(marker in str(exc) for marker in UNIQUE_KEY_RACE) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
