"""One config trained into one MLflow run: prepare, build, track, fit, log — each step a function of its own."""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from src.core import compat
from src.core.config import run_name, validate
from src.core.errors import ConfigError, DataError
from src.core.interrupts import raise_if_interrupted, signals_blocked
from src.core.runstates import FINISHED, SKIPPED
from src.data.loading import load_data
from src.data.splits import Splits
from src.tracking.models import BEST, FINAL
from src.tracking.provenance import config_digest
from src.tracking.resume import ResumePoint, resume_point
from src.tracking.run import Run, RunResult
from src.tracking.store import DATA_DIGEST_TAG, client, ensure_store, finished_run_with_digest
from src.training import checkpoints, reuse, runtime
from src.training.monitor import EpochMonitor

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    *,
    parent_run_id: Optional[str] = None,
    overrides: Optional[Sequence[str]] = None,
    extra_tags: Optional[Dict[str, str]] = None,
    on_epoch_end: Sequence = (),
    output_dir: Optional[Path] = None,
) -> RunResult:
    """Train one config into one MLflow run; `on_epoch_end` callbacks hear every epoch after it is logged.

    `output_dir` (default: the working directory) keeps metrics the store would not take.

    Bad config, data or store raise a UserError (before any run exists, or when the store cannot
    start or log one: that run is FAILED); a failure during training is returned as a FAILED
    RunResult; Ctrl-C or SIGTERM raises RunInterrupted.
    """
    job = prepare(cfg, output_dir)
    if job.finished_run_id:
        log.info("resume: %s already FINISHED as run %s; skipped", job.name, job.finished_run_id)
        return RunResult(job.name, SKIPPED, job.finished_run_id)
    built = build(job)
    with track(job, built, parent_run_id=parent_run_id, overrides=overrides, extra_tags=extra_tags) as run:
        log.info("run %s: %s", run.run_id, job.name)
        monitor = fit(job, built, run, on_epoch_end)
        log_results(job, built, run, monitor, on_epoch_end)
    if run.result.status == FINISHED:
        reuse.keep(built.graph, built.model, job.splits.x_val[:1])
        log.info("%s FINISHED. %s", job.name, run.ui_hint())
    return run.result


@dataclass
class Job:
    """A config ready to train: checked, its data loaded, its store reachable, its resume point found."""

    cfg: DictConfig
    name: str
    splits: Splits
    chief: bool  # the one process of a multi-worker cluster that writes to the store
    output_dir: Path
    staging: Path  # where checkpoints are written before their upload
    finished_run_id: Optional[str] = None  # resume=true: the run that already FINISHED this config
    resume: Optional[ResumePoint] = None  # resume=true: the stopped run this one continues

    @property
    def first_epoch(self) -> int:
        return self.resume.first_epoch if self.resume else 0


@dataclass
class Built:
    """What training runs on: the distribution strategy and its devices, the data pipelines, the model."""

    strategy: Any
    devices: List[str]
    train_ds: Any
    val_ds: Any
    model: Any  # freshly built, or a compiled one of an earlier job holding the fresh one's state
    steps_per_epoch: int
    graph: Optional[str] = None  # the key the model is kept under for the next job with its graph


def prepare(cfg: DictConfig, output_dir: Optional[Path]) -> Job:
    """The cheap checks first, before TensorFlow's ~3 s import: config, then data, then the store, then resume."""
    validate(cfg)
    cfg = _with_absolute_data_path(cfg)
    chief = runtime.is_chief(cfg)  # a multi-worker cluster trains in every worker; only its chief touches the store
    splits = load_data(cfg.data, progress=not cfg.quiet)
    if len(splits.x_train) < cfg.train.batch_size:  # data.n_train=-1: known only now
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: larger than the {len(splits.x_train)} training "
                          "rows: an epoch would have no full step")
    if chief:
        ensure_store(cfg.mlflow.tracking_uri)
    # checkpoints are staged in the job's folder (a copy stays there), else in a temporary one
    staging = output_dir or Path(tempfile.mkdtemp(prefix="overfit-lab-checkpoint-"))
    job = Job(cfg, run_name(cfg), splits, chief, output_dir or Path.cwd(), staging)
    if cfg.resume:
        _find_resume(job)
    return job


def _find_resume(job: Job) -> None:
    """resume=true: the run that FINISHED this config already, else the stopped run to continue, if any."""
    cfg, digest = job.cfg, config_digest(job.cfg)
    job.finished_run_id = finished_run_with_digest(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, digest)
    if job.finished_run_id:
        _check_same_data(job, client(cfg.mlflow.tracking_uri).get_run(job.finished_run_id))
        return
    job.resume = resume_point(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, digest, cfg.train.epochs,
                              job.staging)
    if job.resume is not None:
        _check_same_data(job, job.resume.run)
        log.info("resume: %s continues run %s from its checkpoint after epoch %d", job.name,
                 job.resume.run.info.run_id, job.resume.snapshot.epoch)


def _check_same_data(job: Job, run) -> None:
    """A run is continued (or counted done) only on the rows it trained on: a history spliced from two data sets,
    under the first one's digest, would be a lie. DataError naming the run otherwise."""
    logged = run.data.tags.get(DATA_DIGEST_TAG)
    if logged is not None and logged != job.splits.digest():
        raise DataError(f"resume: the data changed since run {run.info.run_id} trained on it ({DATA_DIGEST_TAG} "
                        f"{logged[:12]}... then, {job.splits.digest()[:12]}... now); restore the data, or start a new "
                        "run with resume=false")


def build(job: Job) -> Built:
    """TensorFlow imported, devices and strategy set up, the data pipelines and the model built."""
    compat.import_tensorflow()  # without what Keras imports for features unused here (~0.7 s)
    from src.data.pipeline import make_datasets
    from src.training.models import build_model
    from src.training.tasks import task_of

    cfg = job.cfg
    strategy, devices = runtime.prepare(cfg)
    steps_per_epoch = len(job.splits.x_train) // cfg.train.batch_size
    train_ds, val_ds = make_datasets(job.splits, cfg.train.batch_size, cfg.seed,
                                     start_step=job.first_epoch * steps_per_epoch)
    task = task_of(cfg.task)
    with strategy.scope():
        model = build_model(cfg.model, cfg.reg, job.splits.x_train.shape[1:],
                            task.n_outputs(job.splits.y_train, job.splits.y_val))
    graph = reuse.graph_key(cfg, job.splits, steps_per_epoch, strategy)
    compiled = reuse.take(graph, model)
    if compiled is not model:
        log.info("%s: trains on the compiled model an earlier job of this process left (its graph is this job's)",
                 job.name)
    return Built(strategy, devices, train_ds, val_ds, compiled, steps_per_epoch, graph)


def track(job: Job, built: Built, *, parent_run_id: Optional[str], overrides: Optional[Sequence[str]],
          extra_tags: Optional[Dict[str, str]]):
    """The run's context: a tracked run on the chief (new, or the stopped one resumed), an untracked one elsewhere."""
    from src.tracking.datasets import split_datasets
    from src.tracking.lifecycle import tracked_run, untracked_run

    snapshot = job.resume.snapshot if job.resume else None
    tags = {DATA_DIGEST_TAG: job.splits.digest(), **runtime.device_tags(built.strategy, built.devices),
            **(extra_tags or {})}
    return (tracked_run if job.chief else untracked_run)(
        job.cfg, run_name=job.name, parent_run_id=parent_run_id, overrides=overrides,
        datasets=split_datasets(job.splits), output_dir=job.output_dir, extra_tags=tags,
        resume_run_id=job.resume.run.info.run_id if job.resume else None,
        resumed_history=snapshot.history if snapshot else None,
    )


def fit(job: Job, built: Built, run: Run, on_epoch_end: Sequence) -> EpochMonitor:
    """The configured loop over the epochs left, checkpointed; out of memory is a one-line ConfigError."""
    import tensorflow as tf

    from src.training import loops
    from src.training.loop_settings import LoopSettings

    cfg, resume = job.cfg, job.resume
    monitor = EpochMonitor.from_config(cfg.train)
    checkpointer = checkpoints.Checkpointer(
        cfg.train.checkpoint_every, job.staging / checkpoints.ARTIFACT_DIR, history=run.result.history,
        upload=run.log_checkpoint,  # each checkpoint first checks the run is still this process's
        model=built.model, monitor=monitor, resumed_slot=resume.slot if resume else None,
    )
    settings = LoopSettings.from_config(
        cfg, strategy=built.strategy, steps_per_epoch=built.steps_per_epoch, initial_epoch=job.first_epoch,
        on_epoch_end=(run.log_epoch, checkpointer, raise_if_interrupted, *on_epoch_end), monitor=monitor,
        restore=None if resume is None else lambda m, o: checkpoints.restore(
            resume.snapshot, m, o, monitor, origin=f"run {resume.run.info.run_id}'s checkpoint"),
    )
    try:
        loops.LOOPS[cfg.loop.name](built.model, built.train_ds, built.val_ds, cfg.loop, settings)
    except KeyboardInterrupt:
        with signals_blocked():  # the last finished epoch's state, saved before the run ends KILLED
            checkpointer.save(wait=True)
        raise
    except (tf.errors.ResourceExhaustedError, MemoryError):
        raise ConfigError(f"out of memory while training {job.name}: lower train.batch_size={cfg.train.batch_size} "
                          f"or the model's size (model={cfg.model.name})") from None
    finally:
        with signals_blocked():  # no write of the run's artifacts after it has ended
            checkpointer.close()
    run.result.checkpoint_seconds = checkpointer.seconds
    run.result.checkpoint_write_seconds = checkpointer.write_seconds
    return monitor


def log_results(job: Job, built: Built, run: Run, monitor: EpochMonitor, on_epoch_end: Sequence) -> None:
    """After the epochs: the monitor's and the callbacks' tags, the final and best models, the run's figures."""
    run.set_tags(_monitor_tags(monitor, epochs_run=len(run.result.history.get("loss", []))))
    for callback in on_epoch_end:  # a callback with tags for the run (a search trial's state)
        if hasattr(callback, "run_tags"):
            run.set_tags(callback.run_tags())
    if job.cfg.mlflow.log_models:
        _log_models(job, built, run, monitor)
    from src.analysis import plots  # matplotlib (~0.35 s): imported once the epochs are done, not before the first

    figures = plots.run_figures(run.result.history, job.name, getattr(job.cfg.task, "value", job.cfg.task))
    run.log_figures(figures)
    plots.close(figures)


def _log_models(job: Job, built: Built, run: Run, monitor: EpochMonitor) -> None:
    """The final model, and the best epoch's when the monitor has one, each outputting probabilities."""
    import numpy as np

    from src.training.models import scoring_model
    from src.training.tasks import task_of

    example = np.asarray(job.splits.x_val[:5])
    last_epoch = len(run.result.history["loss"]) - 1
    activation = task_of(job.cfg.task).output_activation  # probabilities, or the raw values of a regression
    final_epoch = monitor.best_epoch if monitor.restore_best and monitor.best_epoch is not None else last_epoch
    with compat.serving_input_check_skipped():  # it reloads each model just saved: ~0.45 s a model
        run.log_model(scoring_model(built.model, activation=activation), FINAL, step=last_epoch, example=example,
                      weights=f"the weights of epoch {final_epoch}, " + (
                          f"the best by {monitor.metric}, restored when training ended" if final_epoch != last_epoch
                          else "the last"),
                      tags={"weights": "best epoch" if monitor.restore_best else "last epoch",
                            "epoch": str(final_epoch)})
        if monitor.best_epoch is not None:
            run.log_model(scoring_model(built.model, monitor.best_weights, activation=activation), BEST,
                          step=monitor.best_epoch, example=example,
                          weights=f"the weights of epoch {monitor.best_epoch}, the best by {monitor.metric}",
                          tags={"best_epoch": str(monitor.best_epoch), "monitor": monitor.metric})


def _monitor_tags(monitor: EpochMonitor, *, epochs_run: int) -> Dict[str, str]:
    """The monitored metric's best epoch and value, and the epoch training stopped after (if early)."""
    tags = {"monitor": monitor.metric, "epochs_run": str(epochs_run)}
    if monitor.best_epoch is not None:
        tags.update(best_epoch=str(monitor.best_epoch), best_value=repr(monitor.best))
    if monitor.stopped_epoch is not None:
        tags["stopped_epoch"] = str(monitor.stopped_epoch)
    return tags


def _with_absolute_data_path(cfg: DictConfig) -> DictConfig:
    """A copy whose `data.path` is absolute, so the logged config reruns from any directory."""
    from src.data.higgs import data_path  # its one-line errors: a symlink loop, a process substitution

    cfg = cfg.copy()
    if OmegaConf.select(cfg, "data.path", default=None) is not None:
        cfg.data.path = str(data_path(cfg.data.path))
    return cfg
