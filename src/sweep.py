"""Sweeps: the one way a parent run is made, the Hydra callback that gives a multirun one, and job results."""

import atexit
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError, UserError
from src.liveness import HEARTBEAT_TAG, dead_reason, process_tags
from src.redaction import redact, redact_files, redact_log_handlers
from src.store import PARENT_TAG, SWEEP_OVERRIDES_TAG, SWEEP_TAG, client, ensure_store, experiment_id
from src.interrupts import signals_blocked
from src.tracking import FAILED, FINISHED, KILLED, SKIPPED, source_tags

PARENT_RUN_FILE = "mlflow_parent_run.json"
JOB_RESULT_FILE = "job_result.json"
RUNNING = "RUNNING"
PRUNED = "PRUNED"  # a search's trial its pruner stopped (src.search): a result, not a failure


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

    def write(self, output_dir: Path) -> None:
        (output_dir / JOB_RESULT_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read_all(cls, sweep_dir: Path, parent_run_id: str) -> List["JobResult"]:
        """The results of this sweep's jobs in its folder, in job order (stale files of an earlier sweep left out)."""
        results = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{JOB_RESULT_FILE}")]
        mine = [cls(**r) for r in results if r.get("parent_run_id") == parent_run_id]
        return sorted(mine, key=lambda r: r.job)


def create_parent_run(
    tracking_uri: str, exp_id: str, *, name: str, overrides: Sequence[str], tags: Optional[Dict[str, str]] = None,
    command: str = "src.train",
) -> str:
    """A sweep's parent run, tagged sweep=true with its overrides (passwords masked); returns its ID."""
    identity = {k: v for k, v in process_tags().items() if k != HEARTBEAT_TAG}  # its jobs beat, not the parent
    all_tags = {
        SWEEP_TAG: "true",
        SWEEP_OVERRIDES_TAG: redact(" ".join(overrides))[:5000],
        **source_tags(command),
        **identity,
        **(tags or {}),
    }
    return client(tracking_uri).create_run(exp_id, run_name=redact(name)[:250], tags=all_tags).info.run_id


def end_parent_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a parent run ended, holding Ctrl-C until it is written."""
    with signals_blocked():
        client(tracking_uri).set_terminated(run_id, status)


def sweep_status(statuses: Sequence[str], completed: bool) -> str:
    """A parent's end state: KILLED if a job was, FINISHED only if the sweep completed and every job finished."""
    if KILLED in statuses or RUNNING in statuses:
        return KILLED
    if completed and all(s in (FINISHED, SKIPPED, PRUNED) for s in statuses):
        return FINISHED
    return FAILED


def read_parent_run_id(sweep_dir: Path) -> Optional[str]:
    path = sweep_dir / PARENT_RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


def find_parent_run_id(sweep_dir: Path, tracking_uri: str, experiment_name: str) -> Optional[str]:
    """A job's sweep parent: from the sweep's folder, or (a job on another machine, where that folder is not
    shared) the RUNNING parent run tagged with the folder, through the tracking server."""
    run_id = read_parent_run_id(sweep_dir)
    if run_id is not None:
        return run_id
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.{SWEEP_TAG} = 'true' and tags.sweep_dir = '{sweep_dir}' and attributes.status = 'RUNNING'",
    )
    return runs[0].info.run_id if runs else None


class HydraMlflowCallback(Callback):
    """Prepares the store before jobs start; gives a multirun one parent run."""

    def __init__(self) -> None:
        self._sweep: Optional[_SweepParent] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # (A single run needs nothing here: train() checks the config, the data, then the store.)
        redact_log_handlers()  # before the launcher logs each job's overrides
        try:
            check_remote_launch(config)
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
    if _is_search(config.hydra) and str(storage).startswith("sqlite"):
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
    search: bool = False  # an Optuna search summarizes itself (src.search.record_study)
    finished: bool = False

    @classmethod
    def start(cls, config: DictConfig) -> "_SweepParent":
        hydra_cfg = config.hydra  # HydraConfig is not set yet when multirun starts
        if _is_search(hydra_cfg):  # a search's own settings are checked before anything is created
            from src.search import check_settings

            check_settings(hydra_cfg.sweeper)
        sweep_dir = Path(hydra_cfg.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = config.mlflow.tracking_uri
        exp_id = experiment_id(uri, config.mlflow.experiment_name, config.mlflow.artifact_location)
        overrides = list(hydra_cfg.overrides.task)
        run_id = _study_parent(hydra_cfg, uri)  # a named Optuna study keeps one parent across its workers
        if run_id is None:
            plan = SweepPlan.of(config, overrides)
            run_id = create_parent_run(uri, exp_id, name=plan.name, overrides=overrides,
                                       tags={"sweep_dir": str(sweep_dir), NOTE_TAG: plan.note(sweep_dir)})
            _log_shared_params(uri, run_id, config, plan.axes)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": redact(uri)}))
        parent = cls(uri, run_id, sweep_dir, search=_is_search(hydra_cfg))
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
                    _summarize_on_parent(self.tracking_uri, self.run_id, self.sweep_dir)
                except Exception as exc:  # a comparison is a nicety: the parent still ends, with its true state
                    print(f"sweep {self.run_id}: no comparison logged ({type(exc).__name__}: "
                          f"{redact(str(exc))[:200]})", file=sys.stderr)
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


NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI
OBJECTIVE = "val_binary_crossentropy"  # what a sweep's best child is picked by (lower is better)


@dataclass
class SweepPlan:
    """What a sweep varies: each swept key's values, the fixed overrides, the number of jobs, a short name."""

    axes: Dict[str, List[str]]
    fixed: List[str]
    jobs: int
    name: str

    @classmethod
    def of(cls, config: DictConfig, overrides: Sequence[str]) -> "SweepPlan":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        axes, fixed = {}, []
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            key = override.get_key_element()
            if override.is_sweep_override():
                try:
                    axes[key] = [str(v) for v in override.sweep_string_iterator()]
                except Exception:  # an interval: only a search samples it, so it is shown as written
                    axes[key] = [override.input_line.split("=", 1)[1]]
            elif not key.lstrip("+~").startswith(("mlflow.", "hydra")):
                fixed.append(override.input_line)
        searched = _is_search(config.hydra)
        jobs = int(config.hydra.sweeper.n_trials) if searched else _product(len(v) for v in axes.values())
        model = "" if "model" in axes else f" {config.model.name}"
        epochs = "" if "train.epochs" in axes else f" {config.train.epochs}ep"
        kind = "search" if searched else "sweep"
        name = f"{kind} {jobs}×{model}{epochs} {'×'.join(axes) or 'no axes'}"
        return cls(axes, fixed, jobs, name)

    def note(self, sweep_dir: Path) -> str:
        """The parent's description: the command, what is swept, what is fixed, where the comparison lives."""
        swept = "\n".join(f"- `{k}`: {', '.join(v)}" for k, v in self.axes.items())
        return redact(
            f"**{self.name}**: {self.jobs} runs, nested below.\n\n"
            f"Command: `python -m src.train -m {' '.join([*self.fixed, *(f'{k}=' + ','.join(v) for k, v in self.axes.items())])}`\n\n"
            f"Swept:\n{swept}\n\nFixed: {' '.join(f'`{f}`' for f in self.fixed) or 'the defaults'} "
            f"(every other value is a param of this run).\n\n"
            f"Comparison: the artifacts under `compare/` (the overlay of `{OBJECTIVE}` and `table.txt`), written "
            f"when the sweep ends; the best child is the metric `best_{OBJECTIVE}` and the tag `best_run_name`. "
            f"Again at any time: `python -m src.compare <this run's ID>`.\n\nFolder: `{sweep_dir}`"
        )


def _product(numbers) -> int:
    total = 1
    for n in numbers:
        total *= n
    return total


def _log_shared_params(tracking_uri: str, run_id: str, config: DictConfig, axes: Dict[str, List[str]]) -> None:
    """The config every child shares (what is not swept) as the parent's params."""
    from mlflow.entities import Param

    from src.tracking import flat_params

    plain = {k: v for k, v in config.items() if k != "hydra"}
    params = {k: v for k, v in flat_params(OmegaConf.create(plain)).items()
              if not any(k == axis or k.startswith(axis + ".") for axis in axes)}
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client(tracking_uri).log_batch(run_id, params=items[i:i + 100])


def _summarize_on_parent(tracking_uri: str, run_id: str, sweep_dir: Path) -> None:
    """At a sweep's end: `src.compare`'s figures and table on the parent, and its best child as metric and tags."""
    import contextlib
    import io

    from src import compare

    mlflow_client = client(tracking_uri)
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'FINISHED'")
    best = None
    for child in children:
        values = [m.value for m in mlflow_client.get_metric_history(child.info.run_id, OBJECTIVE)]
        if values and (best is None or min(values) < best[0]):
            best = (min(values), child)
    if best is None:
        return
    from mlflow.entities import Metric, RunTag

    mlflow_client.log_batch(run_id, metrics=[Metric(f"best_{OBJECTIVE}", best[0], int(time.time() * 1000), 0)],
                            tags=[RunTag("best_run_id", best[1].info.run_id),
                                  RunTag("best_run_name", best[1].info.run_name)])
    with contextlib.redirect_stdout(io.StringIO()) as table:  # the figures and the table, logged under compare/
        compare.main([run_id, "--tracking-uri", tracking_uri, "--out", str(sweep_dir / "compare")])
    print(table.getvalue(), end="", file=sys.stderr)


def _is_search(hydra_cfg) -> bool:
    return str(hydra_cfg.sweeper.get("_target_", "")).endswith("optuna_sweeper.OptunaSweeper")


def _study_parent(hydra_cfg, tracking_uri: str) -> Optional[str]:
    """The existing parent run of the named study this search continues (reopened: RUNNING again), or None."""
    if not _is_search(hydra_cfg):
        return None
    from src.search import study_parent_run

    run_id = study_parent_run(hydra_cfg.sweeper)
    if run_id is not None:
        client(tracking_uri).update_run(run_id, status=RUNNING)
    return run_id


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
