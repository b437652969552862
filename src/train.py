"""`python -m src.train`: train one config (or a sweep with `-m`) and track it in MLflow."""

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import compat
from src.config import run_name, validate
from src.data import load_higgs
from src.errors import ConfigError, JobFailed, RunInterrupted, UserError, composition_error_line
from src import checkpoints, runtime, search
from src.interrupts import handle_interrupts, raise_if_interrupted, requeue_if_preempted, signals_blocked
from src.redaction import RedactedStream, redact, redact_files, redact_log_handlers
from src.store import DATA_DIGEST_TAG, ensure_store, finished_run_with_digest
from src.sweep import JobResult, find_parent_run_id
from src.tracking import FAILED, FINISHED, KILLED, SKIPPED, RunResult, config_digest

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
    validate(cfg)
    cfg = _with_absolute_data_path(cfg)
    # a multi-worker cluster trains in every worker, and only its chief touches the store
    chief = runtime.is_chief(cfg)
    # the cheap checks first: config, then data, then the store (importing MLflow takes seconds)
    splits = load_higgs(cfg.data, progress=not cfg.quiet)
    if len(splits.x_train) < cfg.train.batch_size:  # data.n_train=-1: known only now
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: larger than the {len(splits.x_train)} training "
                          "rows: an epoch would have no full step")
    if chief:
        ensure_store(cfg.mlflow.tracking_uri)
    name = run_name(cfg)
    # checkpoints are staged in the job's folder (a copy stays there), else in a temporary one
    staging = output_dir or Path(tempfile.mkdtemp(prefix="overfit-lab-checkpoint-"))
    output_dir = output_dir or Path.cwd()
    resume = None
    if cfg.resume:
        digest = config_digest(cfg)
        done = finished_run_with_digest(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, digest)
        if done:
            log.info("resume: %s already FINISHED as run %s; skipped", name, done)
            return RunResult(name, SKIPPED, done)
        resume = checkpoints.resume_point(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, digest,
                                          cfg.train.epochs, staging)
        if resume is not None:
            log.info("resume: %s continues run %s from its checkpoint after epoch %d", name,
                     resume.run.info.run_id, resume.snapshot.epoch)
    first_epoch = resume.first_epoch if resume else 0
    snapshot = resume.snapshot if resume else None

    # TensorFlow is imported only now: bad config, data or store is reported before its ~3 s import.
    compat.import_tensorflow()  # without what Keras imports for features unused here (~0.7 s)
    import mlflow.data
    import numpy as np
    import tensorflow as tf

    from src import loops
    from src.data import make_datasets
    from src.models import build_model, scoring_model
    from src.tracking import dataset_source, tracked_run, untracked_run

    strategy, devices = runtime.prepare(cfg)
    steps_per_epoch = len(splits.x_train) // cfg.train.batch_size
    train_ds, val_ds = make_datasets(splits, cfg.train.batch_size, cfg.seed, start_step=first_epoch * steps_per_epoch)
    with strategy.scope():
        model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
    source = dataset_source(splits.source)
    datasets = {
        context: mlflow.data.from_numpy(x, targets=y, source=source, name=dataset_name,
                                        digest=compat.numpy_dataset_digest(x, y))
        for context, dataset_name, x, y in [("training", "higgs-train", splits.x_train, splits.y_train),
                                    ("validation", "higgs-val", splits.x_val, splits.y_val)]
    }
    tags = {DATA_DIGEST_TAG: splits.digest(), **runtime.device_tags(strategy, devices), **(extra_tags or {})}
    with (tracked_run if chief else untracked_run)(
        cfg, run_name=name, parent_run_id=parent_run_id, overrides=overrides, datasets=datasets,
        output_dir=output_dir, extra_tags=tags,
        resume_run_id=resume.run.info.run_id if resume else None,
        resumed_history=snapshot.history if snapshot else None,
    ) as run:
        log.info("run %s: %s", run.run_id, name)
        checkpointer = checkpoints.Checkpointer(
            cfg.train.checkpoint_every, staging / checkpoints.ARTIFACT_DIR, history=run.result.history,
            upload=run.log_checkpoint,  # each checkpoint first checks the run is still this process's
            resumed_slot=resume.slot if resume else None,
        )
        settings = loops.LoopSettings.from_config(
            cfg, strategy=strategy, steps_per_epoch=steps_per_epoch, initial_epoch=first_epoch,
            on_epoch_end=(run.log_epoch, checkpointer, raise_if_interrupted, *on_epoch_end),
            restore=None if snapshot is None else lambda m, o: checkpoints.restore(snapshot, m, o, settings.monitor),
        )
        checkpointer.model, checkpointer.monitor = model, settings.monitor
        try:
            loops.LOOPS[cfg.loop.name](model, train_ds, val_ds, cfg.loop, settings)
        except KeyboardInterrupt:
            with signals_blocked():  # the last finished epoch's state, saved before the run ends KILLED
                checkpointer.save(wait=True)
            raise
        except (tf.errors.ResourceExhaustedError, MemoryError):
            raise ConfigError(f"out of memory while training {name}: lower train.batch_size={cfg.train.batch_size} "
                              f"or model.hidden_units={list(cfg.model.hidden_units)}") from None
        finally:
            with signals_blocked():  # no write of the run's artifacts after it has ended
                checkpointer.close()
        run.result.checkpoint_seconds = checkpointer.seconds
        run.result.checkpoint_write_seconds = checkpointer.write_seconds
        monitor = settings.monitor
        run.set_tags(_monitor_tags(monitor, epochs_run=len(run.result.history.get("loss", []))))
        for callback in on_epoch_end:  # a callback with tags for the run (a search trial's state)
            if hasattr(callback, "run_tags"):
                run.set_tags(callback.run_tags())
        if cfg.mlflow.log_models:
            example = np.asarray(splits.x_val[:5])
            last_epoch = len(run.result.history["loss"]) - 1
            with compat.serving_input_check_skipped():  # it reloads each model just saved: ~0.45 s a model
                run.log_model(scoring_model(model), "model", step=last_epoch, example=example,
                              tags={"weights": "best epoch" if monitor.restore_best else "last epoch"})
                if monitor.best_epoch is not None:
                    run.log_model(scoring_model(model, monitor.best_weights), "best_model", step=monitor.best_epoch,
                                  example=example, tags={"best_epoch": str(monitor.best_epoch),
                                                         "monitor": monitor.metric})
        from src import plots  # matplotlib (~0.35 s): imported once the epochs are done, not before the first
        figures = plots.run_figures(run.result.history, name)
        run.log_figures(figures)
        plots.close(figures)
    if run.result.status == FINISHED:
        log.info("%s FINISHED. %s", name, run.ui_hint())
    return run.result


def _monitor_tags(monitor, *, epochs_run: int) -> Dict[str, str]:
    """The monitored metric's best epoch and value, and the epoch training stopped after (if early)."""
    tags = {"monitor": monitor.metric, "epochs_run": str(epochs_run)}
    if monitor.best_epoch is not None:
        tags.update(best_epoch=str(monitor.best_epoch), best_value=repr(monitor.best))
    if monitor.stopped_epoch is not None:
        tags["stopped_epoch"] = str(monitor.stopped_epoch)
    return tags


def _with_absolute_data_path(cfg: DictConfig) -> DictConfig:
    """A copy whose `data.path` is absolute, so the logged config reruns from any directory."""
    cfg = cfg.copy()
    if cfg.data.path is not None:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


def _in_worker_process(hydra_cfg) -> bool:
    """Whether this job runs in a launcher's worker process (joblib, Ray, SLURM), not in the sweep's own."""
    return hydra_cfg.mode == RunMode.MULTIRUN and "BasicLauncher" not in hydra_cfg.launcher._target_


def _job_threads(cfg: DictConfig, hydra_cfg) -> int:
    """`train.threads`, or with 0 under a parallel launcher, this job's share of the cores."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if cfg.train.threads or hydra_cfg.mode != RunMode.MULTIRUN or not n_jobs:
        return cfg.train.threads
    cores = len(os.sched_getaffinity(0))
    n_jobs = max(1, cores + 1 + n_jobs) if n_jobs < 0 else n_jobs  # joblib: -1 = every core, -2 = all but one
    return max(1, cores // n_jobs)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Optional[dict]:
    """Hydra entry point: one job of a run or a sweep; its outcome is left in job_result.json."""
    handle_interrupts()  # in a launcher's worker too: SIGTERM ends the run KILLED, never left RUNNING
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    cfg.train.threads = _job_threads(cfg, hydra_cfg)
    redact_files(output_dir / ".hydra")  # Hydra's record of the job's config and overrides
    redact_log_handlers()
    parent_run_id = find_parent_run_id(Path(hydra_cfg.sweep.dir), cfg.mlflow.tracking_uri,
                                       cfg.mlflow.experiment_name) if multirun else None
    job = JobResult(job=hydra_cfg.job.num if multirun else 0, run_name=run_name(cfg), parent_run_id=parent_run_id,
                    overrides=[redact(o) for o in overrides])
    job.write(output_dir)
    try:
        reporter = search.trial_reporter(cfg.trial, OmegaConf.select(hydra_cfg, "sweeper"))
        result = train(cfg, parent_run_id=parent_run_id, overrides=overrides, output_dir=output_dir,
                       on_epoch_end=[reporter] if reporter else [],
                       extra_tags=reporter.identity_tags() if reporter else None)
        job.status, job.run_id, job.run_name, job.error = result.status, result.run_id, result.run_name, result.error
        if reporter and reporter.pruned_epoch is not None and result.status == FINISHED:
            job.status = search.PRUNED
    except KeyboardInterrupt as exc:
        job.status, job.error = KILLED, "interrupted"
        job.run_id = exc.run_id if isinstance(exc, RunInterrupted) else None
        if _in_worker_process(hydra_cfg):
            job.write(output_dir)
            requeue_if_preempted()  # SLURM's or submitit_local's preemption: submitit requeues the job now, and exits
            logging.shutdown()
            os._exit(130)  # a launcher's worker ends with its job: its pool would otherwise keep it training
        raise
    except Exception as exc:
        job.status, job.error = FAILED, redact((str(exc).splitlines() or [type(exc).__name__])[0])
        if not isinstance(exc, UserError):
            log.exception("job failed")
        raise
    finally:
        job.write(output_dir)
    if job.status == FAILED:
        raise JobFailed(job.error, run_id=job.run_id)  # Hydra prints it as one line; a sweep's summary names the run
    # what a sweeper hears back from the launcher (the optuna sweeper scores the trial from the history)
    return {"status": job.status, "run_id": job.run_id, "history": dict(result.history)}


if __name__ == "__main__":
    sys.stdout, sys.stderr = RedactedStream(sys.stdout), RedactedStream(sys.stderr)
    handle_interrupts()  # SIGTERM ends a sweep like Ctrl-C: its parent KILLED, the summary printed, workers stopped
    compat.one_line_config_errors(composition_error_line)
    # conf/hydra/launcher/ray.yaml and submitit_slurm.yaml replace the plugins' own options on purpose (see them)
    warnings.filterwarnings("ignore",
                            message=r"\s*'hydra/launcher/(ray|submitit_slurm)' is validated against ConfigStore schema")
    search.register_sweeper()
    try:
        main()
    except KeyboardInterrupt:
        # The run (and the sweep's parent run) are already marked KILLED.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
