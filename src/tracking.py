"""Everything MLflow: the store, one run per job, a parent run per sweep, run states."""

import atexit
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.config import CONFIG_DIR, PROJECT_ROOT
from src.errors import NonFiniteLossError, TrackingError

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run.json"
JOB_RESULT_FILE = "job_result.json"
CONFIG_ARTIFACT = "config.yaml"
OVERRIDES_ARTIFACT = "overrides.yaml"
PARENT_TAG = "mlflow.parentRunId"
# Keys that do not change what a run computes: left out of the config digest.
NON_SEMANTIC_KEYS = ("mlflow", "quiet", "resume")
# URI schemes MLflow tracks to (a driver may follow a `+`, as in postgresql+psycopg2)
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def redact_uri(uri: str) -> str:
    """Hide the password of a `scheme://user:password@host` URI."""
    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", uri)


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_store(tracking_uri: str) -> None:
    """Create or migrate the store (or reach the server) once, before any job starts."""
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if len(scheme) > 1 and scheme.split("+")[0] not in TRACKING_SCHEMES:  # len 1: a Windows drive letter
        raise TrackingError(
            f"mlflow.tracking_uri={redact_uri(tracking_uri)}: unsupported scheme {scheme!r}; "
            "use sqlite:///<path>/mlflow.db, http(s)://<host>:<port> or a local folder"
        )
    if tracking_uri.startswith(("http://", "https://")):
        health = tracking_uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(health, timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"mlflow.tracking_uri: no MLflow server at {redact_uri(tracking_uri)} ({reason}); "
                "start one with `make server` or fix the URI"
            ) from None
        return
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"mlflow.tracking_uri: cannot create {db.parent}: {exc.strerror}") from None
        if db.exists() and not _writable(db) or not _writable(db.parent):
            raise TrackingError(f"mlflow.tracking_uri: {db} is not writable")
    from mlflow.exceptions import MlflowException  # only now: importing MLflow takes seconds

    try:
        _client(tracking_uri).search_experiments(max_results=1)
    except MlflowException as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"mlflow.tracking_uri={redact_uri(tracking_uri)}: {first_line}") from None
    except Exception as exc:  # SQLAlchemy and friends raise their own types for bad URIs
        raise TrackingError(f"mlflow.tracking_uri={redact_uri(tracking_uri)}: {type(exc).__name__}: {exc}") from None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def experiment_id(tracking_uri: str, name: str, artifact_location: Optional[str]) -> str:
    """The experiment's ID, creating it (with its artifact location) on first use."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    remote = tracking_uri.startswith(("http://", "https://"))
    location = None if remote or artifact_location is None else Path(artifact_location).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # another process created it between our lookup and our create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def config_digest(cfg: DictConfig) -> str:
    """A digest of everything that changes what a run computes (for resume)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    semantic = {key: value for key, value in resolved.items() if key not in NON_SEMANTIC_KEYS}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]


def flat_params(cfg: DictConfig) -> Dict[str, str]:
    """The resolved config as `section.key` params, without the tracking settings."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            params[prefix[:-1]] = str(node)

    walk("", {key: value for key, value in resolved.items() if key != "mlflow"})
    return params


def git_state() -> Dict[str, str]:
    """The project's git commit and whether the work tree had uncommitted changes."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
    }


def software_versions() -> Dict[str, str]:
    import keras
    import mlflow
    import numpy
    import tensorflow as tf

    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_version": mlflow.__version__,
        "numpy_version": numpy.__version__,
        "python_version": sys.version.split()[0],
    }


@dataclass
class TrackedRun:
    """An MLflow run being written: per-epoch metrics go through `log_epoch`."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    run_name: str
    history: Dict[str, List[float]] = field(default_factory=dict)
    client: Any = None
    # One background writer: an epoch's sqlite write (~10 ms) overlaps the next
    # epoch instead of adding to it; writes stay in order.
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    _pending: List[Future] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = _client(self.tracking_uri)

    def log_epoch(self, epoch: int, metrics: Dict[str, float]) -> None:
        """All of one epoch's metrics in a single call, step = epoch index."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, epoch) for key, value in metrics.items()]
        self._pending.append(self._writer.submit(self.client.log_batch, self.run_id, metrics=batch))
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))

    def flush(self) -> None:
        """Wait for every metric write; re-raises a write's error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def ui_hint(self) -> str:
        return (
            f"MLflow run ID {self.run_id}: open it with `make ui`, then "
            f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        )


@contextmanager
def tracked_run(
    cfg: DictConfig,
    *,
    run_name: str,
    parent_run_id: Optional[str],
    overrides: Optional[List[str]],
    datasets: Dict[str, Any],
    extra_tags: Optional[Dict[str, str]] = None,
) -> Iterator[TrackedRun]:
    """One MLflow run around a job; it always ends FINISHED, FAILED or KILLED, never RUNNING."""
    from mlflow.entities import Param, RunStatus

    uri = cfg.mlflow.tracking_uri
    client = _client(uri)
    exp_id = experiment_id(uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
    tags = {
        "config_digest": config_digest(cfg),
        "loop": cfg.loop.name,
        "reg": cfg.reg.name,
        "model": cfg.model.name,
        **git_state(),
        **software_versions(),
        **(extra_tags or {}),
    }
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    tracked = TrackedRun(uri, run.info.run_id, exp_id, run_name)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        params = [Param(key, value) for key, value in flat_params(cfg).items()]
        client.log_batch(tracked.run_id, params=params)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        resolved["mlflow"]["tracking_uri"] = redact_uri(resolved["mlflow"]["tracking_uri"])
        client.log_text(tracked.run_id, OmegaConf.to_yaml(OmegaConf.create(resolved)), CONFIG_ARTIFACT)
        if overrides is not None:
            client.log_text(tracked.run_id, OmegaConf.to_yaml(OmegaConf.create(list(overrides))), OVERRIDES_ARTIFACT)
        _log_datasets(client, tracked.run_id, datasets)
        yield tracked
        tracked.flush()
        status = RunStatus.to_string(RunStatus.FINISHED)
    except BaseException as exc:
        exc.mlflow_run_id = tracked.run_id  # lets the sweep summary name the failed run
        if isinstance(exc, KeyboardInterrupt):
            status = RunStatus.to_string(RunStatus.KILLED)
        with signals_blocked():
            _flush_quietly(tracked)
            _record_failure(client, tracked.run_id, exc)
        raise
    finally:
        with signals_blocked():  # a second Ctrl-C must not leave the run RUNNING
            tracked._writer.shutdown(wait=True)
            client.set_terminated(tracked.run_id, status)


def _flush_quietly(tracked: TrackedRun) -> None:
    """Keep the epochs already logged; the run's own error is the one to report."""
    try:
        tracked.flush()
    except Exception as exc:
        log.warning("some metrics of run %s were not written: %s", tracked.run_id, exc)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (they are delivered afterwards)."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _record_failure(client, run_id: str, exc: BaseException) -> None:
    """Tag why a run stopped; keep the traceback of unexpected errors as an artifact."""
    if isinstance(exc, KeyboardInterrupt):
        client.set_tag(run_id, "error", "interrupted (SIGINT/SIGTERM)")
        return
    client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
    if isinstance(exc, NonFiniteLossError):
        client.set_tag(run_id, "nan_at_epoch", str(exc.epoch))
    client.log_text(run_id, "".join(traceback.format_exception(exc)), "error.txt")


def dataset_source(location: str):
    """The MLflow dataset source of a URL or a local path, picked without guessing."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if location.startswith(("http://", "https://")):
        return HTTPDatasetSource(location)
    # MLflow registers the local source class twice and warns when it has to
    # guess between them; take the first by name.
    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return local(location)


def _log_datasets(client, run_id: str, datasets: Dict[str, Any]) -> None:
    """Each dataset (context -> mlflow.data dataset) with its digest, as a run input."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [
        DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        for context, dataset in datasets.items()
    ]
    for attempt in range(5):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:
            # Parallel jobs log the same dataset: the store looks it up, misses, and
            # inserts, so two jobs can race on its unique key. Once the other job's
            # insert has landed, a retry finds the dataset and only links it.
            if "UNIQUE constraint failed" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def finished_run_with_digest(cfg: DictConfig, digest: str) -> Optional[str]:
    """The ID of a FINISHED run of the experiment with this config digest, if any (resume)."""
    client = _client(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.config_digest = '{digest}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


# --- reading a store back (reproduce, compare) ---------------------------

def project_mlflow_defaults() -> DictConfig:
    """The `mlflow` section of conf/config.yaml, resolved (the project's store and experiment)."""
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml").mlflow, resolve=True))


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the project's store from conf/config.yaml."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project_mlflow_defaults().tracking_uri


def open_store(tracking_uri: str):
    """A client of an existing store; a missing local database is an error, not a new empty store."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.exists():
            raise TrackingError(f"--tracking-uri: no MLflow store at {db}")
    ensure_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def get_run(client, run_id: str, tracking_uri: str):
    """The run, or a one-line error naming the ID and the store."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        reason = "no such run" if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else str(exc).splitlines()[0]
        raise TrackingError(f"run {run_id}: {reason} in {redact_uri(tracking_uri)}") from None


def sweep_children(client, parent) -> list:
    """A sweep parent's child runs, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(
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


# --- sweeps -----------------------------------------------------------------


def write_job_result(output_dir: Path, result: Dict[str, Any]) -> None:
    """Leave the job's outcome beside its log, for the sweep summary."""
    (output_dir / JOB_RESULT_FILE).write_text(json.dumps(result))


def read_parent_run_id(sweep_dir: Path) -> Optional[str]:
    path = sweep_dir / PARENT_RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


class HydraMlflowCallback(Callback):
    """Prepares the store before jobs start; gives a multirun one parent run."""

    def __init__(self) -> None:
        self._sweep: Optional[_SweepParent] = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Nothing to prepare for a single run: train() validates the config, reads the
        # data, then reaches the store, and a problem becomes the job's one-line error.
        # (Hydra turns an exception raised in a callback into a warning and runs the job anyway.)
        pass

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            ensure_store(config.mlflow.tracking_uri)
        except TrackingError as exc:
            # raised, Hydra would only warn and start every job against a broken store
            print(exc, file=sys.stderr)
            sys.exit(1)
        self._sweep = _SweepParent.start(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._sweep is not None:
            self._sweep.finish(completed=True)


@dataclass
class _SweepParent:
    """The parent run of a multirun; ended at the end, or at exit if a job failed."""

    tracking_uri: str
    run_id: str
    sweep_dir: Path
    finished: bool = False

    @classmethod
    def start(cls, config: DictConfig) -> "_SweepParent":
        hydra_cfg = config.hydra  # HydraConfig is not set yet when multirun starts
        sweep_dir = Path(hydra_cfg.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = config.mlflow.tracking_uri
        exp_id = experiment_id(uri, config.mlflow.experiment_name, config.mlflow.artifact_location)
        overrides = list(hydra_cfg.overrides.task)
        shown = [o for o in overrides if not o.lstrip("+~").startswith(("mlflow.", "hydra"))]
        run = _client(uri).create_run(
            exp_id,
            run_name=f"sweep {' '.join(shown)}"[:250],
            tags={"sweep": "true", "sweep_overrides": " ".join(overrides)[:5000], "sweep_dir": str(sweep_dir), **git_state()},
        )
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": redact_uri(uri)}))
        parent = cls(uri, run.info.run_id, sweep_dir)
        atexit.register(parent.finish, completed=False)  # on_multirun_end is skipped when a job fails
        print(f"sweep parent run {run.info.run_id}", file=sys.stderr)
        return parent

    def finish(self, completed: bool) -> None:
        """End the parent run: FINISHED only if the sweep completed and every job finished."""
        if self.finished:
            return
        self.finished = True
        from mlflow.entities import RunStatus

        results = [json.loads(p.read_text()) for p in sorted(self.sweep_dir.glob(f"*/{JOB_RESULT_FILE}"))]
        statuses = [r["status"] for r in results]
        if "KILLED" in statuses or any(r["status"] == "RUNNING" for r in results):
            status = RunStatus.KILLED
        elif completed and all(s in ("FINISHED", "SKIPPED") for s in statuses):
            status = RunStatus.FINISHED
        else:
            status = RunStatus.FAILED
        with signals_blocked():
            _client(self.tracking_uri).set_terminated(self.run_id, RunStatus.to_string(status))
        print(_summary(results, self.run_id, RunStatus.to_string(status)), file=sys.stderr)


def _summary(results: List[Dict[str, Any]], parent_run_id: str, status: str) -> str:
    """A short table of the sweep's jobs: name, status, run ID, error."""
    counts: Dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    head = f"sweep {parent_run_id} {status}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [head]
    for r in results:
        line = f"  job {r['job']:>3}  {r['status']:<8}  {r.get('run_name') or '-':<32}  {r.get('run_id') or '-'}"
        if r.get("error"):
            line += f"  {r['error']}"
        lines.append(line)
    return "\n".join(lines)
