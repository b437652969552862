"""The MLflow store, read side: check or open a store, find runs, read metric histories; the shared tag names.

Every command that reads runs (compare, reproduce, any later one) goes through here;
writing a run is `src/tracking/lifecycle.py` and `run.py`, a sweep's parent run is `src/experiments/sweep_parent.py`.
"""

import base64
import fcntl
import logging
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from src.core.errors import TrackingError
from src.core.redaction import redact
from src.core.runstates import FAILED, KILLED
from src.core.schema import CONFIG_DIR

log = logging.getLogger(__name__)

# Tags and artifacts every run of this project carries, by name.
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "sweep"  # "true" on a sweep's parent run
SWEEP_OVERRIDES_TAG = "sweep_overrides"
DIGEST_TAG = "config_digest"
DATA_DIGEST_TAG = "data_sha256"  # every value of the training and validation rows
CONFIG_DIRS_TAG = "config_dirs"  # a JSON list of the run's own config folders (--config-dir): where its options are
CONFIG_ARTIFACT = "config.yaml"
OVERRIDES_ARTIFACT = "overrides.yaml"
# what a new experiment says it holds, in the UI's description and as a tag to find the project's experiments by
EXPERIMENT_TAGS = {
    "mlflow.note.content": "Runs of overfit-lab (`python -m src.train`): each training run logs its config as params, "
                           "every epoch's metrics, its datasets, checkpoints and logged models; a sweep or search is a "
                           "parent run with its jobs nested below. Compare them with `python -m src.compare`, rerun "
                           "any with `python -m src.reproduce RUN_ID`.",
    "project": "overfit-lab",
}
SWEEP_FILTER = f"tags.{SWEEP_TAG} = 'true'"
# URI schemes MLflow tracks to (a driver may follow a `+`, as in postgresql+psycopg2)
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")

Histories = Dict[str, Dict[int, float]]  # metric -> step -> value


def is_sweep_parent(run) -> bool:
    return run.data.tags.get(SWEEP_TAG) == "true"


def client(tracking_uri: str):
    from mlflow import MlflowClient

    # MLflow prints "View run ... at" for a server's runs; the commands here print their own link once
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=tracking_uri)


def ensure_store(tracking_uri: str) -> None:
    """Create or migrate the store (or reach the server), or say in one line why it cannot be used."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if len(scheme) > 1 and scheme.split("+")[0] not in TRACKING_SCHEMES:  # len 1: a Windows drive letter
        raise TrackingError(
            f"mlflow.tracking_uri={redact(tracking_uri)}: unsupported scheme {scheme!r}; "
            "use sqlite:///<path>/mlflow.db, http(s)://<host>:<port> or a local folder"
        )
    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
        return
    db = Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a link to nowhere (or in a loop) "exists" to mkdir
            why = "a symlink that leads nowhere (or in a loop)" if db.parent.is_symlink() else exc.strerror
            raise TrackingError(f"mlflow.tracking_uri: cannot create {db.parent}: {why}") from None
        if db.exists() and not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"mlflow.tracking_uri: {db} is not writable")
    from mlflow.exceptions import MlflowException  # only now: importing MLflow takes seconds

    try:
        with _creation_lock(db):
            if db is not None:
                _refuse_half_migrated(db)
            client(tracking_uri).search_experiments(max_results=1)  # creates or migrates the store
    except TrackingError:
        raise
    except MlflowException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"mlflow.tracking_uri={redact(tracking_uri)}: {first_line}") from None
    except Exception as exc:  # SQLAlchemy and friends raise their own types for bad URIs
        raise TrackingError(f"mlflow.tracking_uri={redact(tracking_uri)}: {type(exc).__name__}: {exc}") from None


def _check_server(tracking_uri: str) -> None:
    """An MLflow server answers at the URI (credentials in it are sent as HTTP basic auth, as MLflow does)."""
    parts = urllib.parse.urlsplit(tracking_uri)
    try:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    except ValueError as exc:  # e.g. a port that is not a number
        raise TrackingError(f"mlflow.tracking_uri={redact(tracking_uri)}: {exc}") from None
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health")
    if parts.username is not None:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    shown = redact(tracking_uri)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read(200)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"mlflow.tracking_uri: no MLflow server at {shown} ({reason}); start one with `make server` or fix the URI"
        ) from None
    if body.strip() != b"OK":
        raise TrackingError(f"mlflow.tracking_uri: {shown} answers, but not as an MLflow server does "
                            f"(its /health said {body[:60]!r}); check the host and port")


@contextmanager
def _creation_lock(db: Optional[Path]) -> Iterator[None]:
    """An exclusive lock beside a SQLite store while MLflow opens it: its first open creates and migrates
    the tables without a lock, and concurrent first opens corrupt the store."""
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _refuse_half_migrated(db: Path) -> None:
    """A store an interrupted migration left with Alembic's temporary tables fails every later run: say so."""
    if not db.exists():
        return
    try:  # read-write: a writer killed mid-transaction leaves a hot journal that only a writer can roll back
        with sqlite3.connect(f"file:{db}?mode=rw", uri=True) as connection:
            leftovers = [row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"
            )]
    except sqlite3.DatabaseError as exc:
        raise TrackingError(f"mlflow.tracking_uri: {db} is not a readable SQLite store ({exc})") from None
    if leftovers:
        raise TrackingError(
            f"mlflow.tracking_uri: {db} was left half-migrated by an interrupted MLflow upgrade (leftover table "
            f"{leftovers[0]}); back the file up, then `sqlite3 {db} 'DROP TABLE {leftovers[0]}'` and run again"
        )


def experiment_id(tracking_uri: str, name: str, artifact_location: Optional[str]) -> str:
    """The experiment's ID, creating it (with its artifact location) on first use."""
    from mlflow.exceptions import MlflowException

    if not name.strip():
        raise TrackingError("mlflow.experiment_name: must not be empty")
    name = redact(name)  # the name as resolved may hold a secret (${oc.env:...}): the store holds it masked
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    remote = tracking_uri.startswith(("http://", "https://"))
    location = None if remote or artifact_location is None else Path(artifact_location).as_uri()
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"mlflow.experiment_name={name}: the experiment is deleted (in the store's trash); restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or pick another name"
        )
    if experiment is not None:
        if location and experiment.artifact_location.rstrip("/") != location.rstrip("/"):
            log.warning("mlflow.artifact_location=%s is not used: experiment %r keeps its artifacts in %s, set when "
                        "it was created; a new mlflow.experiment_name takes the new location", artifact_location,
                        name, experiment.artifact_location)
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:
        # another process created it between our lookup and our create
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def project_mlflow_defaults() -> DictConfig:
    """The `mlflow` section of conf/config.yaml, resolved (the project's store and experiment)."""
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml").mlflow, resolve=True))


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the project's store from conf/config.yaml."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project_mlflow_defaults().tracking_uri


def open_store(tracking_uri: str):
    """A client of an existing store; a missing local database is an error, not a new empty store."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.exists():
            raise TrackingError(f"--tracking-uri: no MLflow store at {db}")
    ensure_store(tracking_uri)
    return client(tracking_uri)


def get_run(mlflow_client, run_id: str, tracking_uri: str):
    """The run, or a one-line error naming the ID and the store (a deleted run included)."""
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException as exc:
        reason = "no such run" if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else str(exc).splitlines()[0]
        raise TrackingError(f"run {run_id}: {reason} in {redact(tracking_uri)}") from None
    if run.info.lifecycle_stage == "deleted":  # in the trash: evaluate, reproduce and compare take it for no run
        raise TrackingError(f"run {run_id}: deleted in {redact(tracking_uri)} (restore it in the UI, or `mlflow runs "
                            "restore --run-id` it, to use it)")
    return run


def sweep_children(mlflow_client, parent) -> list:
    """A sweep parent's child runs, oldest first."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_histories(mlflow_client, run, keys=None) -> Histories:
    """Each metric of a run (all, or `keys`) as step -> value; a step logged twice keeps its latest value."""
    histories: Histories = {}
    for key in run.data.metrics if keys is None else keys:
        points = sorted(mlflow_client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        histories[key] = {m.step: m.value for m in points}
    return histories


def finished_run_with_digest(tracking_uri: str, experiment_name: str, digest: str) -> Optional[str]:
    """The ID of a FINISHED run of the experiment with this config digest, if any (resume)."""
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(redact(experiment_name))  # as experiment_id named it
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{DIGEST_TAG} = '{digest}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def resumable_run(tracking_uri: str, experiment_name: str, digest: str, checkpoint_dir: str):
    """The newest run with this config digest that stopped early (KILLED, FAILED, or RUNNING with its process
    gone: marked FAILED now) and has a checkpoint in its artifacts; None if there is none."""
    from src.tracking.liveness import reap_dead_runs

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(redact(experiment_name))  # as experiment_id named it
    if experiment is None:
        return None
    reap_dead_runs(mlflow_client, experiment.experiment_id)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{DIGEST_TAG} = '{digest}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        if run.info.status not in (KILLED, FAILED):  # a RUNNING one is alive; the store takes no IN here
            continue
        if mlflow_client.list_artifacts(run.info.run_id, checkpoint_dir):
            return run
    return None


def store_identity(uri: str) -> str:
    """What names a store whatever its spelling: a database file's resolved path, else the URL without credentials."""
    if uri.startswith("sqlite:///"):
        return "sqlite:" + os.path.realpath(os.path.expanduser(uri[len("sqlite:///"):]))  # a symlink loop: no error
    parts = urllib.parse.urlsplit(uri)
    host = (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"


def artifact_folder(tracking_uri: str) -> Optional[str]:
    """Where a new experiment of a local database store keeps its artifacts: `artifacts/` beside the database file
    (MLflow's default is ./mlruns of whatever the working directory is); None for a server, which chooses."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return str(Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent / "artifacts")
