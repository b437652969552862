"""One run's life in the store: started or claimed, its inputs logged, and ended FINISHED, FAILED or KILLED."""

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from src.core.config import to_plain
from src.core.errors import NonFiniteLossError, RunInterrupted, TrackingError, UserError
from src.core.interrupts import signals_blocked
from src.core.redaction import redact
from src.core.runstates import FINISHED
from src.tracking.claims import claim_run
from src.tracking.datasets import log_datasets
from src.tracking.liveness import Heartbeat, process_tags, reap_dead_runs
from src.tracking.provenance import config_digest, flat_params, option_tags, software_versions, source_tags
from src.tracking.run import TrackedRun, UntrackedRun
from src.tracking.store import CONFIG_ARTIFACT, DIGEST_TAG, OVERRIDES_ARTIFACT, PARENT_TAG, client, experiment_id
from src.tracking.writer import MetricWriter, StoreWriteError, store_error_line, store_unreachable

log = logging.getLogger(__name__)


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
    tags = _run_tags(cfg, parent_run_id, extra_tags)
    try:
        exp_id = experiment_id(uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
        reap_dead_runs(mlflow_client, exp_id)  # runs whose process was killed (kill -9, out of memory) end FAILED
    except MlflowException as exc:
        raise TrackingError(f"mlflow.tracking_uri={redact(uri)}: cannot start a run ({store_error_line(exc)})") from None
    run_id = writer = heartbeat = system_metrics = claim = tracked = None
    status = RunStatus.FAILED
    lost = False  # the store stopped answering: every closing write is then tried once, quietly

    def ours() -> bool:  # a run another process has claimed since is its alone: not a word more to it from here
        return tracked is None or not tracked.taken_over

    try:
        try:
            if resume_run_id is None:
                run_id = mlflow_client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            else:
                with signals_blocked():  # a claim won is a run taken: Ctrl-C lands once the run is RUNNING here
                    claim = claim_run(mlflow_client, resume_run_id, tags)
                    run_id = resume_run_id
        except MlflowException as exc:
            raise TrackingError(f"mlflow.tracking_uri={redact(uri)}: cannot start a run ({store_error_line(exc)})") from None
        writer = MetricWriter(mlflow_client, run_id, uri, cfg.mlflow.retry_seconds, output_dir)
        tracked = TrackedRun(uri, run_id, exp_id, run_name, writer, client=mlflow_client, claim=claim,
                             ui_url=cfg.mlflow.ui_url)
        heartbeat = Heartbeat(mlflow_client, run_id)
        if cfg.mlflow.system_metrics:
            system_metrics = _start_system_metrics(run_id, uri, cfg.mlflow.system_metrics_seconds,
                                                   resumed=resume_run_id is not None)
        if resume_run_id is None:
            _log_inputs(tracked, cfg, overrides, datasets)
        else:
            _continue(tracked, resumed_history or {})
        try:
            yield tracked
            writer.flush()
            status = RunStatus.FINISHED
            tracked.result.status = FINISHED
        except Exception as exc:
            lost = isinstance(exc, StoreWriteError) or store_unreachable(exc)
            if lost and not isinstance(exc, UserError):  # one line naming the store, not MLflow's chained tracebacks
                exc = TrackingError(f"mlflow.tracking_uri={redact(uri)}: the store stopped answering while run "
                                    f"{run_id}'s results were written ({store_error_line(exc)}); the run is marked "
                                    f"FAILED by the next run of the experiment if the store cannot be told now")
            elif not isinstance(exc, UserError):
                log.error("run %s (%s) failed", run_id, run_name, exc_info=exc)
            tracked.result.error = str(exc) if lost else store_error_line(exc)
            with signals_blocked():
                writer.abandon()
                if not lost and ours():
                    _quietly(_record_failure, mlflow_client, run_id, exc)
    except KeyboardInterrupt as exc:
        status = RunStatus.KILLED
        if run_id is None:
            raise
        with signals_blocked():
            if writer is not None:
                writer.abandon()
            if ours() and not (writer is not None and writer.broken):  # a store known gone: its line was said
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
            broken = lost or (writer is not None and bool(writer.broken))
            if run_id is not None and ours():
                _quietly(mlflow_client.set_terminated, run_id, RunStatus.to_string(status), quiet=broken)


def _start_system_metrics(run_id: str, uri: str, seconds: float, *, resumed: bool):
    """MLflow's sampler of CPU, memory, disk and network (GPU where present) for the run, on a thread of its own."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    sampler_log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")  # its warnings are this one's
    sampler_log.setLevel(logging.WARNING)  # it says "started" and "stopped" at INFO
    if not any(isinstance(f, _NoStoreTrouble) for f in sampler_log.filters):
        sampler_log.addFilter(_NoStoreTrouble())  # a lost store is the run's own one line, not the sampler's too
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


class _NoStoreTrouble(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "API request to" not in record.getMessage()


def _stop_system_metrics(monitor, timeout: float = 5.0) -> None:
    """Stop the sampler and log what it holds, waiting at most `timeout` s: its last look at the run goes to the
    store, and a store that stopped answering must not hold the run's end up."""
    import threading

    stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
    stopper.start()
    stopper.join(timeout)


def _run_tags(cfg: DictConfig, parent_run_id: Optional[str], extra_tags: Optional[Dict[str, str]]) -> Dict[str, str]:
    """What a run starts tagged with: its config's digest, options, source, software, process, parent and the
    caller's tags."""
    tags = {
        DIGEST_TAG: config_digest(cfg),
        **option_tags(cfg),
        **source_tags("src.train"),
        **software_versions(),
        **process_tags(),
        **(extra_tags or {}),
    }
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    return tags


def _cannot_log_inputs(run: TrackedRun, exc: Exception) -> TrackingError:
    return TrackingError(f"run {run.run_id}: cannot log its config, params and datasets to "
                         f"{redact(run.tracking_uri)} ({store_error_line(exc)})")


def _continue(run: TrackedRun, history: Dict[str, List[float]]) -> None:
    """A resumed run's history up to its checkpoint, what the store lacks of it logged (TrackingError if it fails)."""
    try:
        run.continue_history(history)
    except Exception as exc:
        raise _cannot_log_inputs(run, exc) from None


def _log_inputs(run: TrackedRun, cfg: DictConfig, overrides, datasets: Dict[str, Any]) -> None:
    """Params, the config and overrides as artifacts (secrets masked), and the datasets (TrackingError if it fails)."""
    try:
        _write_inputs(run.client, run.run_id, cfg, overrides, datasets)
    except Exception as exc:
        raise _cannot_log_inputs(run, exc) from None


def _write_inputs(mlflow_client, run_id: str, cfg: DictConfig, overrides, datasets: Dict[str, Any]) -> None:
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
