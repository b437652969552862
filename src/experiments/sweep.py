"""Sweeps: the Hydra callback that gives a multirun its parent run, the remote-launch checks, and job results."""

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src.core.errors import ConfigError, UserError
from src.core.interrupts import signals_blocked
from src.core.redaction import redact, redact_files, redact_log_handlers
from src.core.runstates import KILLED, RUNNING
from src.experiments.launch_checks import check_launcher
from src.experiments.search import check_settings, check_space, study_parent_run
from src.experiments.sweep_parent import (
    NOTE_TAG,
    PARENT_ENV,
    PARENT_RUN_FILE,
    SWEEP_KEY_TAG,
    SweepPlan,
    create_parent_run,
    end_parent_run,
    is_search,
    log_shared_params,
    register_best_of,
    reopen_parent_run,
    resumable_parent,
    summarize_on_parent,
    sweep_key,
    sweep_status,
)
from src.tracking.liveness import dead_reason
from src.tracking.store import PARENT_TAG, client, ensure_store, experiment_id

JOB_RESULT_FILE = "job_result.json"
LOCK_FILE = ".sweep.lock"


@dataclass
class JobResult:
    """One job's outcome, left beside its log as job_result.json for the sweep's summary."""

    job: int
    run_name: str
    parent_run_id: Optional[str] = None  # the sweep it belongs to: a folder reused by resume holds older ones
    overrides: List[str] = field(default_factory=list)
    status: str = RUNNING
    run_id: Optional[str] = None
    error: Optional[str] = None
    pid: Optional[int] = None  # the job's process: a launcher whose worker died finds its run by it

    def write(self, output_dir: Path) -> None:
        (output_dir / JOB_RESULT_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read_all(cls, sweep_dir: Path, parent_run_id: str) -> List["JobResult"]:
        """The results of this sweep's jobs in its folder, in job order (stale files of an earlier sweep left out)."""
        results = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{JOB_RESULT_FILE}")]
        mine = [cls(**r) for r in results if r.get("parent_run_id") == parent_run_id]
        return sorted(mine, key=lambda r: r.job)


class HydraMlflowCallback(Callback):
    """Prepares the store before jobs start; gives a multirun one parent run."""

    def __init__(self) -> None:
        self._sweep: Optional[_SweepParent] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # (A single run needs nothing here: train() checks the config, the data, then the store.)
        redact_log_handlers()  # before the launcher logs each job's overrides
        try:
            check_remote_launch(config)
            check_launcher(config)  # a launcher that could not start a job: said before any parent run exists
            if config.train.strategy == "multi_worker":  # every worker would start a sweep and a parent run of its own
                raise ConfigError("train.strategy=multi_worker: one run across the workers, not a sweep; start one "
                                  "`python -m src.train` (without -m) per worker")
            ensure_store(config.mlflow.tracking_uri)
            self._sweep = _SweepParent.start(config)
        except Exception as exc:
            # raised, Hydra would only warn and start every job against a broken store or experiment, or without
            # their parent run
            print(exc if isinstance(exc, UserError) else f"sweep: its parent run could not be made "
                  f"({type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '')})", file=sys.stderr)
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._sweep is not None:
            self._sweep.finish(completed=True)


# Launchers whose jobs may run on other machines than the sweep's: they need a store and paths every node reaches.
REMOTE_LAUNCHERS = ("RayLauncher", "RayAWSLauncher", "SlurmLauncher")


def check_remote_launch(config: DictConfig) -> None:
    """Refuse, before any job starts, a remote launch whose jobs could not reach the store, the study or the files."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if not launcher.endswith(REMOTE_LAUNCHERS):
        return
    where = f"hydra/launcher={launcher.rsplit('.', 1)[-1]} runs jobs on other machines"
    uri = config.mlflow.tracking_uri
    if not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(f"mlflow.tracking_uri={redact(uri)}: {where}, which cannot reach this machine's store; "
                          "start a tracking server (`make server`) and pass mlflow.tracking_uri=http://HOST:PORT")
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if is_search(config.hydra) and str(storage).startswith("sqlite"):
        raise ConfigError(f"hydra.sweeper.storage={redact(str(storage))}: {where}, which cannot share a SQLite file; "
                          "use a database server (postgresql+psycopg2://USER@HOST/DB, e.g. the one `make db` starts)")
    for key in ("data.path", "data.cache_dir", "hydra.sweep.dir"):
        value = OmegaConf.select(config, key, default=None)
        if value is not None and not Path(str(value)).expanduser().is_absolute():
            raise ConfigError(f"{key}={value}: {where}, where a relative path means another folder; "
                              "give an absolute path (on a disk every node mounts)")


@dataclass
class _SweepParent:
    """The parent run of a multirun; ended at the end, or at exit if a job failed."""

    tracking_uri: str
    run_id: str
    sweep_dir: Path
    ui_url: str  # mlflow.ui_url: the base of the links it prints
    search: bool = False  # an Optuna search summarizes itself (src.experiments.study_summary)
    register_as: Optional[str] = None  # mlflow.register_best: the registered model's name (the experiment's)
    finished: bool = False
    lock: Optional[IO] = None  # the sweep folder's, held until exit

    @classmethod
    def start(cls, config: DictConfig) -> "_SweepParent":
        hydra_cfg = config.hydra  # HydraConfig is not set yet when multirun starts
        if is_search(hydra_cfg):  # a search's own settings are checked before anything is created
            check_settings(hydra_cfg.sweeper, config.task)
            check_space(config, list(hydra_cfg.overrides.task), hydra_cfg.sweeper.params)
        sweep_dir = Path(hydra_cfg.sweep.dir)
        lock = lock_sweep_dir(sweep_dir)
        uri = config.mlflow.tracking_uri
        exp_id = experiment_id(uri, config.mlflow.experiment_name, config.mlflow.artifact_location)
        overrides = list(hydra_cfg.overrides.task)
        key = sweep_key(overrides)
        run_id = study_parent_run(hydra_cfg.sweeper) if is_search(hydra_cfg) else None
        if run_id is None and config.resume and not is_search(hydra_cfg):
            run_id = resumable_parent(uri, exp_id, key)  # a resumed sweep stays one sweep: its parent again
        if run_id is not None:  # a named Optuna study keeps one parent across its workers and commands
            reopen_parent_run(uri, run_id, {"sweep_dir": str(sweep_dir)})
            print(f"sweep continues under its parent run {run_id}", file=sys.stderr)
        else:
            plan = SweepPlan.of(config, overrides)
            run_id = create_parent_run(uri, exp_id, name=plan.name, overrides=overrides, tags={
                "sweep_dir": str(sweep_dir), SWEEP_KEY_TAG: key, NOTE_TAG: plan.note(sweep_dir, config.task)})
            log_shared_params(uri, run_id, config, plan.axes)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": redact(uri)}))
        _give_jobs_their_parent(config, run_id)
        parent = cls(uri, run_id, sweep_dir, config.mlflow.ui_url, search=is_search(hydra_cfg), lock=lock,
                     register_as=redact(config.mlflow.experiment_name) if config.mlflow.register_best else None)
        atexit.register(parent.finish, completed=False)  # on_multirun_end is skipped when a job fails
        print(f"sweep parent run {run_id}", file=sys.stderr)
        return parent

    def finish(self, completed: bool) -> None:
        """End the parent run from its jobs' results, and print the sweep's summary."""
        if self.finished:
            return
        self.finished = True
        try:
            redact_files(self.sweep_dir, "multirun.yaml")  # Hydra's record of the sweep
            results = JobResult.read_all(self.sweep_dir, self.run_id)
            status = sweep_status([r.status for r in results], completed)
            if status == KILLED:
                self._end_interrupted_jobs(results)
            elif not self.search:
                try:
                    summarize_on_parent(self.tracking_uri, self.run_id, self.sweep_dir, self.ui_url)
                except Exception as exc:  # a comparison is a nicety: the parent still ends, with its true state
                    print(f"sweep {self.run_id}: no comparison logged ({type(exc).__name__}: "
                          f"{redact(str(exc))[:200]})", file=sys.stderr)
                if self.register_as:
                    register_best_of(self.tracking_uri, self.run_id, self.register_as)
            end_parent_run(self.tracking_uri, self.run_id, status)
        except Exception as exc:  # at exit: a traceback here would bury the jobs' own errors
            print(f"sweep {self.run_id}: could not be ended ({type(exc).__name__}: {redact(str(exc))[:300]})",
                  file=sys.stderr)
            return
        print(summary(results, self.run_id, status), file=sys.stderr)

    def _end_interrupted_jobs(self, results: List[JobResult], wait_seconds: float = 15) -> None:
        """Jobs in worker processes that a Ctrl-C killed before they could end their runs: KILLED, not RUNNING."""
        mlflow_client = client(self.tracking_uri)
        running = mlflow_client.search_runs(
            [mlflow_client.get_run(self.run_id).info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}' and attributes.status = 'RUNNING'",
        )
        deadline = time.monotonic() + wait_seconds
        for run in running:
            while run.info.status == RUNNING and dead_reason(run) is None and time.monotonic() < deadline:
                time.sleep(0.5)
                run = mlflow_client.get_run(run.info.run_id)
            if run.info.status == RUNNING and dead_reason(run) is not None:
                with signals_blocked():
                    mlflow_client.set_tag(run.info.run_id, "error", "interrupted with its sweep")
                    mlflow_client.set_terminated(run.info.run_id, KILLED)
        for result in results:
            if result.status == RUNNING:
                result.status, result.error = KILLED, "interrupted with its sweep"


def _give_jobs_their_parent(config: DictConfig, run_id: str) -> None:
    """The parent run's ID in every job's config (an override the launcher composes each job with, so it reaches
    jobs on other machines as it is) and in the sweeper's."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{PARENT_ENV}={run_id}")
        config.hydra.job.env_set[PARENT_ENV] = run_id


def lock_sweep_dir(sweep_dir: Path) -> IO:
    """The sweep's folder, held by this process until it exits: two sweeps in one folder would mix their jobs' logs
    and results."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = open(sweep_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(f"hydra.sweep.dir={sweep_dir}: another sweep ({holder}) is running in this folder; give "
                          "another one, or leave hydra.sweep.dir unset (its default is unique per sweep)") from None
    lock.truncate(0)
    lock.write(f"process {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    return lock


def summary(results: Sequence[JobResult], parent_run_id: str, status: str) -> str:
    """A short table of the sweep's jobs: name, status, run ID, error."""
    counts: Dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    head = f"sweep {parent_run_id} {status}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [head]
    for r in results:
        line = f"  job {r.job:>3}  {r.status:<8}  {r.run_name or '-':<32}  {r.run_id or '-'}"
        if r.error:
            line += f"  {r.error}"
        lines.append(line)
    return "\n".join(lines)
