"""The MLflow store, write side: one run per job with its provenance, per-epoch metrics and a true end state."""

import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from src import compat
from src.config import (
    IMPLIED_LOOP_PARAMS,
    LOOP_SCHEMAS,
    PROJECT_ROOT,
    is_system_metric,
    semantic_part,
    store_metric_name,
    to_plain,
)
from src.errors import NonFiniteLossError, RunInterrupted, TrackingError, UserError
from src.interrupts import signals_blocked
from src.liveness import Heartbeat, claim_dead_reason, claim_owner, claim_token, process_tags, reap_dead_runs
from src.redaction import redact
from src.store import (
    CONFIG_ARTIFACT,
    DIGEST_TAG,
    OVERRIDES_ARTIFACT,
    PARENT_TAG,
    client,
    experiment_id,
)
from src.writer import MetricWriter, StoreWriteError, store_error_line

log = logging.getLogger(__name__)

RESUME_CLAIM_TAG = "resume_claim"  # the claim of the process that holds the run now; none on a run never resumed
# The n-th resume of a run is claimed by a param: the store keeps the first value a param is logged with and
# refuses any other (a unique key in its database), so of processes that claim the same resume, one wins
CLAIM_PARAM = "resume.claim.{}"

FINISHED, FAILED, KILLED, SKIPPED = "FINISHED", "FAILED", "KILLED", "SKIPPED"


class RunTakenOver(TrackingError):
    """Another process has claimed the run this one is training: this one stops, writing nothing more to it."""


# --- provenance ---------------------------------------------------------------


def config_digest(cfg: DictConfig) -> str:
    """A digest of everything that changes what a run computes (for resume and reproduce)."""
    semantic = semantic_part(to_plain(cfg))
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]


def flat_params(cfg: DictConfig) -> Dict[str, str]:
    """The resolved config as `section.key` params, without the tracking settings and a trial's identity (tags);
    a loop's params include what it does for the keys only other loops have (IMPLIED_LOOP_PARAMS)."""
    from dataclasses import fields

    params: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            params[prefix[:-1]] = redact(str(node))

    plain = {key: value for key, value in to_plain(cfg).items() if key not in ("mlflow", "trial")}
    implied = IMPLIED_LOOP_PARAMS.get(cfg.loop.name, {})
    other_keys = {f.name for schema in LOOP_SCHEMAS.values() for f in fields(schema)} - set(plain["loop"])
    plain["loop"] = {**plain["loop"], **{key: implied[key] for key in sorted(other_keys) if key in implied}}
    walk("", plain)
    return params


def git_state() -> Dict[str, str]:
    """The project's git commit and whether the work tree had uncommitted changes."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
    }


def source_tags(command: str) -> Dict[str, str]:
    """What MLflow's UI shows as a run's Source, its User and its git commit: `command` is `src.train`, ..."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        user = f"uid {os.getuid()}"
    return {"mlflow.source.name": command, "mlflow.source.type": "LOCAL", "mlflow.user": user,
            **git_state()}


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


# --- one run ------------------------------------------------------------------


@dataclass
class RunResult:
    """What became of one job: its end state, its run (if one was created) and its metric history."""

    run_name: str
    status: str  # FINISHED, FAILED or SKIPPED (an interrupted run raises RunInterrupted instead)
    run_id: Optional[str] = None
    error: Optional[str] = None  # one line, when FAILED
    history: Dict[str, List[float]] = field(default_factory=dict)
    write_seconds: List[float] = field(default_factory=list)  # time each epoch's log call took
    checkpoint_seconds: List[float] = field(default_factory=list)  # time each epoch's checkpoint call took
    checkpoint_write_seconds: List[float] = field(default_factory=list)  # time each checkpoint's write took


@dataclass
class TrackedRun:
    """An MLflow run being written: per-epoch metrics go through `log_epoch`."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    run_name: str
    writer: MetricWriter
    result: RunResult = None
    client: Any = None
    already_logged: set = field(default_factory=set)  # epochs a resumed run had logged before it stopped
    claim: Optional[str] = None  # this process's claim on a resumed run (RESUME_CLAIM_TAG); None on a new run
    taken_over: Optional[str] = None  # the error line, once another process has claimed the run

    def __post_init__(self) -> None:
        self.client = self.client or client(self.tracking_uri)
        self.result = RunResult(self.run_name, FAILED, self.run_id)

    def log_epoch(self, epoch: int, metrics: Dict[str, float]) -> None:
        """All of one epoch's metrics in a single write, step = epoch index, off the training thread."""
        if self.taken_over:  # found by the last checkpoint's write: this process stops, writing nothing more
            raise RunTakenOver(self.taken_over)
        started = time.perf_counter()
        for key, value in metrics.items():
            self.result.history.setdefault(key, []).append(float(value))
        if epoch not in self.already_logged:
            self.writer.submit(epoch, {store_metric_name(key): value for key, value in metrics.items()})
        self.result.write_seconds.append(time.perf_counter() - started)

    def continue_history(self, history: Dict[str, List[float]]) -> None:
        """A resumed run: take its history up to the checkpoint, log what the store lacks of it, and skip
        epochs the store already has (a run killed after its checkpoint logged a few more)."""
        from src.store import metric_histories

        run = self.client.get_run(self.run_id)  # system metrics count samples, not epochs: left out
        logged = metric_histories(self.client, run, [key for key in run.data.metrics if not is_system_metric(key)])
        self.already_logged = {step for steps in logged.values() for step in steps}
        for epoch in range(len(next(iter(history.values()), []))):
            metrics = {key: values[epoch] for key, values in history.items()}
            for key, value in metrics.items():
                self.result.history.setdefault(key, []).append(float(value))
            if epoch not in self.already_logged:
                self.writer.submit(epoch, {store_metric_name(key): value for key, value in metrics.items()})

    def log_model(self, model, name: str, *, step: int, example, tags: Optional[Dict[str, str]] = None) -> str:
        """A Keras model in MLflow's Keras flavor (with a signature and `example` rows as its input example), linked
        to this run at `step`: it shows in the UI's "Logged models" and loads as `runs:/<run_id>/<name>`. Its ID."""
        import keras
        import mlflow
        import numpy as np
        import tensorflow as tf
        from mlflow.models import Model, infer_signature

        # MLflow's model logging goes through its fluent state: the store and the experiment the logged model
        # belongs to (without it, the model lands in experiment 0 and `runs:/` cannot find it)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)
        # the model called directly: `predict` builds a tf.function and a data adapter first (~0.2 s a model); a
        # signature needs only the outputs' dtype and shape
        signature = infer_signature(example, np.asarray(model(example, training=False)))
        interactive = keras.config.is_interactive_logging_enabled()
        keras.config.disable_interactive_logging()  # MLflow checks the example with a predict that prints a bar
        try:
            # Model.log, as mlflow.keras.log_model calls it, with this run's ID: that wrapper only logs to the
            # fluent active run, which this project never starts (starting one would end the run on exit)
            info = Model.log(
                artifact_path=None, name=name, flavor=compat.keras_flavor(), model=model, signature=signature,
                input_example=example, step=step, run_id=self.run_id, tags=tags,
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            )
        finally:
            if interactive:
                keras.config.enable_interactive_logging()
        return info.model_id

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        """One local file into the run's artifacts, under `artifact_path`."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_checkpoint(self, path: Path, artifact_path: str) -> None:
        """A checkpoint's file into the run's artifacts, if the run is still this process's (`check_claim`)."""
        self.check_claim()
        self.log_artifact(path, artifact_path)

    def check_claim(self) -> None:
        """RunTakenOver if another process has claimed the run since this one did (it took this process for dead:
        a host frozen past the heartbeat's limit); the next epoch's end then stops training."""
        holder = self.client.get_run(self.run_id).data.tags.get(RESUME_CLAIM_TAG)
        if holder != self.claim:
            self.taken_over = (f"run {self.run_id} was resumed by {claim_owner(holder)} meanwhile: this process "
                               "stops and leaves the run to it")
            raise RunTakenOver(self.taken_over)

    def set_tags(self, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def log_figures(self, figures: Dict[str, Any]) -> None:
        """Figures keyed by artifact path; a figure under several paths is drawn once (a PNG costs ~0.1 s)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="overfit-lab-figures-") as folder:
            drawn: Dict[int, Path] = {}
            for artifact_file, figure in figures.items():
                if id(figure) not in drawn:
                    drawn[id(figure)] = Path(folder) / f"{len(drawn)}.png"
                    figure.savefig(drawn[id(figure)])
                target = Path(folder) / "log" / artifact_file  # the file's own name, under its artifact folder
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(drawn[id(figure)], target)
            self.client.log_artifacts(self.run_id, str(Path(folder) / "log"))

    def ui_hint(self) -> str:
        """Where to see the run: the tracking server's own UI, or `make ui` over a local store."""
        page = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if self.tracking_uri.startswith(("http://", "https://")):
            parts = urlsplit(self.tracking_uri)
            host = parts.hostname + (f":{parts.port}" if parts.port else "")  # never the credentials
            return f"MLflow run ID {self.run_id}: {parts.scheme}://{host}{parts.path.rstrip('/')}/{page}"
        return f"MLflow run ID {self.run_id}: open it with `make ui`, then http://127.0.0.1:5000/{page}"


class UntrackedRun:
    """TrackedRun's stand-in on a multi-worker cluster's non-chief worker: it keeps the history the loop and
    early stopping read, and writes nothing anywhere (the chief logs the run)."""

    def __init__(self, run_name: str):
        self.run_name, self.run_id = run_name, None
        self.result = RunResult(run_name, FAILED)

    def log_epoch(self, epoch: int, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            self.result.history.setdefault(key, []).append(float(value))

    def __getattr__(self, name: str):
        # every other write of TrackedRun (log_artifact, log_model, set_tags, figures...) does nothing here
        if name.startswith(("log_", "set_")) and callable(getattr(TrackedRun, name, None)):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def ui_hint(self) -> str:
        return "a non-chief worker: the chief logged the run"


@contextmanager
def untracked_run(cfg: DictConfig, *, run_name: str, **tracked_run_arguments: Any) -> Iterator[UntrackedRun]:
    """`tracked_run`'s twin for a non-chief worker: the same outcome in `run.result` (an error inside the block
    is recorded there, not raised), and no contact with the MLflow store at all."""
    run = UntrackedRun(run_name)
    try:
        yield run
        run.result.status = FINISHED
    except Exception as exc:
        if not isinstance(exc, UserError):
            log.error("%s failed on this worker", run_name, exc_info=exc)
        run.result.error = store_error_line(exc)


@contextmanager
def tracked_run(
    cfg: DictConfig,
    *,
    run_name: str,
    parent_run_id: Optional[str],
    overrides: Optional[Sequence[str]],
    datasets: Dict[str, Any],
    output_dir: Path,
    extra_tags: Optional[Dict[str, str]] = None,
    resume_run_id: Optional[str] = None,
    resumed_history: Optional[Dict[str, List[float]]] = None,
) -> Iterator[TrackedRun]:
    """One MLflow run around a job; it ends FINISHED, FAILED or KILLED wherever the store can still be written.

    `resume_run_id`: continue that stopped run instead of creating one (claimed first, so no other
    process resumes it too); `resumed_history` is its metric history up to its checkpoint: epochs
    missing from the store are logged, and epochs already there are not logged again.

    An error inside the block is recorded on the run and in `run.result` (status FAILED and
    its one-line error) instead of being raised; Ctrl-C or SIGTERM raises RunInterrupted.
    """
    from mlflow.entities import RunStatus

    from mlflow.exceptions import MlflowException

    uri = cfg.mlflow.tracking_uri
    mlflow_client = client(uri)
    tags = {
        DIGEST_TAG: config_digest(cfg),
        **source_tags("src.train"),
        **software_versions(),
        **process_tags(),
        **(extra_tags or {}),
    }
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    try:
        exp_id = experiment_id(uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
        reap_dead_runs(mlflow_client, exp_id)  # runs whose process was killed (kill -9, out of memory) end FAILED
    except MlflowException as exc:
        raise TrackingError(f"mlflow.tracking_uri={redact(uri)}: cannot start a run ({store_error_line(exc)})") from None
    run_id = writer = heartbeat = system_metrics = claim = tracked = None
    status = RunStatus.FAILED

    def ours() -> bool:  # a run another process has claimed since is its alone: not a word more to it from here
        return tracked is None or not tracked.taken_over

    try:
        try:
            if resume_run_id is None:
                run_id = mlflow_client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            else:
                with signals_blocked():  # a claim won is a run taken: Ctrl-C lands once the run is RUNNING here
                    claim = _claim(mlflow_client, resume_run_id, tags)
                    run_id = resume_run_id
        except MlflowException as exc:
            raise TrackingError(f"mlflow.tracking_uri={redact(uri)}: cannot start a run ({store_error_line(exc)})") from None
        writer = MetricWriter(mlflow_client, run_id, uri, cfg.mlflow.retry_seconds, output_dir)
        tracked = TrackedRun(uri, run_id, exp_id, run_name, writer, client=mlflow_client, claim=claim)
        heartbeat = Heartbeat(mlflow_client, run_id)
        if cfg.mlflow.system_metrics:
            system_metrics = _start_system_metrics(run_id, uri, cfg.mlflow.system_metrics_seconds,
                                                   resumed=resume_run_id is not None)
        try:
            if resume_run_id is None:
                _log_inputs(mlflow_client, run_id, cfg, overrides, datasets)
            else:
                tracked.continue_history(resumed_history or {})
        except Exception as exc:
            raise TrackingError(f"run {run_id}: cannot log its config, params and datasets to "
                                f"{redact(uri)} ({store_error_line(exc)})") from None
        try:
            yield tracked
            writer.flush()
            status = RunStatus.FINISHED
            tracked.result.status = FINISHED
        except Exception as exc:
            if not isinstance(exc, UserError):
                log.error("run %s (%s) failed", run_id, run_name, exc_info=exc)
            tracked.result.error = store_error_line(exc)
            with signals_blocked():
                writer.abandon()
                if not isinstance(exc, StoreWriteError) and ours():
                    _quietly(_record_failure, mlflow_client, run_id, exc)
    except KeyboardInterrupt as exc:
        status = RunStatus.KILLED
        if run_id is None:
            raise
        with signals_blocked():
            if writer is not None:
                writer.abandon()
            if ours():
                _quietly(mlflow_client.set_tag, run_id, "error", "interrupted (SIGINT/SIGTERM)")
        raise RunInterrupted(run_id) from exc
    finally:
        with signals_blocked():  # a second Ctrl-C must not leave the run RUNNING
            if heartbeat is not None:
                heartbeat.stop()
            if system_metrics is not None:
                _stop_system_metrics(system_metrics)
            if writer is not None:
                writer.abandon()
            # a store known to be gone was reported already; trying costs nothing
            broken = writer is not None and bool(writer.broken)
            if run_id is not None and ours():
                _quietly(mlflow_client.set_terminated, run_id, RunStatus.to_string(status), quiet=broken)


def _start_system_metrics(run_id: str, uri: str, seconds: float, *, resumed: bool):
    """MLflow's sampler of CPU, memory, disk and network (GPU where present) for the run, on a thread of its own."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # it says "started" and "stopped" at INFO
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def _stop_system_metrics(monitor, timeout: float = 5.0) -> None:
    """Stop the sampler and log what it holds, waiting at most `timeout` s: its last look at the run goes to the
    store, and a store that stopped answering must not hold the run's end up."""
    import threading

    stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
    stopper.start()
    stopper.join(timeout)


def _claim(mlflow_client, run_id: str, tags: Dict[str, str]) -> str:
    """Take over a stopped run to resume it: claim its next resume (CLAIM_PARAM: one process wins it), then mark
    it RUNNING with this process's identity. Returns the claim; TrackingError if another process holds the run."""
    from mlflow.entities import RunTag

    # The resume count first, then the status: the count is raised once the run is RUNNING, so a count read
    # before a stopped status belongs to a resume that has ended (in one read the two may be seen out of order)
    resumes = int(mlflow_client.get_run(run_id).data.tags.get("resumed", "0"))
    run = mlflow_client.get_run(run_id)
    if run.info.status == "RUNNING":
        raise TrackingError(f"run {run_id} is RUNNING in process {run.data.tags.get('pid', '?')} on "
                            f"{run.data.tags.get('host', '?')}: another process is training or resuming it")
    if run.info.status not in (KILLED, FAILED):
        raise TrackingError(f"run {run_id} is {run.info.status}: another process resumed it to its end meanwhile")
    claim = claim_token()
    for attempt in itertools.count(1):
        # a later attempt only past a claim whose process died before it took the run up
        key = CLAIM_PARAM.format(resumes + 1) + (f".{attempt}" if attempt > 1 else "")
        holder = _write_once(mlflow_client, run_id, key, claim)
        if holder == claim:
            break
        dead = claim_dead_reason(holder)
        if dead is None:
            raise TrackingError(f"run {run_id} is being resumed by another process ({claim_owner(holder)})")
        log.warning("resume: run %s's claim %s by %s is void (%s)", run_id, key, claim_owner(holder), dead)
    if attempt > 1 and mlflow_client.get_run(run_id).data.tags.get("resumed", "0") != str(resumes):
        raise TrackingError(f"run {run_id} is being resumed by another process (it was resumed meanwhile)")
    # the identity before RUNNING: a RUNNING run is judged alive or dead by it (src/liveness.py)
    identity = {k: v for k, v in tags.items() if k in (*process_tags(), "mlflow.source.git.commit")}
    mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**identity, RESUME_CLAIM_TAG: claim}.items()])
    mlflow_client.update_run(run_id, status="RUNNING")
    mlflow_client.set_tag(run_id, "resumed", str(resumes + 1))  # after RUNNING (see above)
    if "error" in run.data.tags:  # it said why it stopped; it goes on now
        mlflow_client.delete_tag(run_id, "error")
    return claim


def _write_once(mlflow_client, run_id: str, key: str, value: str) -> Optional[str]:
    """Log a param unless the run has it; the value it holds now (`value` if this call set it)."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.log_param(run_id, key, value)
        refused = None
    except MlflowException as exc:  # INVALID_PARAMETER_VALUE: it holds another value (else the read says why)
        refused = exc
    # read back even when taken: a folder store (no database) checks, then writes, and two writers both pass
    held = mlflow_client.get_run(run_id).data.params.get(key)
    if held is None:
        raise refused or TrackingError(f"run {run_id}: the store dropped the param {key}")
    return held


def _log_inputs(mlflow_client, run_id: str, cfg: DictConfig, overrides, datasets: Dict[str, Any]) -> None:
    """Params, the config and overrides as artifacts (secrets masked), and the datasets."""
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(key, value) for key, value in flat_params(cfg).items()])
    mlflow_client.log_text(run_id, redact(OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg)))), CONFIG_ARTIFACT)
    if overrides is not None:
        # as typed on a command line: a sweep's job gets them with Hydra's escapes (`sqlite\:///...`), which a
        # single run does not need for a colon
        readable = [override.replace("\\:", ":") for override in overrides]
        mlflow_client.log_text(run_id, redact(OmegaConf.to_yaml(OmegaConf.create(readable))), OVERRIDES_ARTIFACT)
    log_datasets(mlflow_client, run_id, datasets)


def _quietly(write, *args, quiet: bool = False) -> None:
    """A closing write to the store; if the store is gone, say so in one line (unless `quiet`) instead of raising."""
    try:
        write(*args)
    except Exception as exc:
        what = getattr(write, "__name__", "a closing write")
        (log.debug if quiet else log.warning)("the store did not take %s (%s)", what, store_error_line(exc))


def _record_failure(mlflow_client, run_id: str, exc: BaseException) -> None:
    """Tag why a run stopped; keep the traceback as an artifact."""
    mlflow_client.set_tag(run_id, "error", redact(f"{type(exc).__name__}: {exc}")[:5000])
    if isinstance(exc, NonFiniteLossError):
        mlflow_client.set_tag(run_id, "nan_at_epoch", str(exc.epoch))
    mlflow_client.log_text(run_id, redact("".join(traceback.format_exception(exc))), "error.txt")


# --- datasets -----------------------------------------------------------------


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
