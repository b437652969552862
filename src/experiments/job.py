"""One Hydra job of a run or a sweep: its threads, its sweep parent, its trial reporter, its job_result.json."""

import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.core.config import run_name
from src.core.errors import JobFailed, RunInterrupted, UserError, first_line
from src.core.interrupts import handle_interrupts, requeue_if_preempted
from src.core.redaction import redact, redact_files, redact_log_handlers
from src.core.runstates import FAILED, FINISHED, KILLED, PRUNED
from src.core.schema import CONFIG_DIR
from src.experiments import search
from src.experiments.sweep import JobResult
from src.experiments.sweep_parent import NOTE_TAG, find_parent_run_id
from src.experiments.train import train
from src.tracking.models import retitle_models
from src.tracking.store import CONFIG_DIRS_TAG, client

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> Optional[dict]:
    """One job of a run or a sweep (Hydra's task function); its outcome is left in job_result.json."""
    handle_interrupts()  # in a launcher's worker too: SIGTERM ends the run KILLED, never left RUNNING
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    cfg.train.threads = _job_threads(cfg, hydra_cfg)
    redact_files(output_dir / ".hydra")  # Hydra's record of the job's config and overrides
    redact_log_handlers()
    parent_run_id = find_parent_run_id(Path(hydra_cfg.sweep.dir), cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name,
                                       hydra_cfg.job.env_set) if multirun else None
    job = JobResult(job=hydra_cfg.job.num if multirun else 0, run_name=run_name(cfg), parent_run_id=parent_run_id,
                    overrides=[redact(o) for o in overrides], pid=os.getpid())
    job.write(output_dir)
    try:
        reporter = search.trial_reporter(cfg.trial, OmegaConf.select(hydra_cfg, "sweeper"), cfg.task)
        tags = {**_config_dirs_tag(hydra_cfg), **(reporter.identity_tags() if reporter else {})}
        if parent_run_id:  # a child says what it is: its job, its sweep, its values
            tags[NOTE_TAG] = redact(f"Job {job.job} of the sweep run `{parent_run_id}` (its parent): "
                                    + " ".join(f"`{o}`" for o in overrides if not o.startswith(("mlflow.", "hydra.")))
                                    )[:5000]
        result = train(cfg, parent_run_id=parent_run_id, overrides=overrides, output_dir=output_dir,
                       on_epoch_end=[reporter] if reporter else [], extra_tags=tags)
        job.status, job.run_id, job.run_name, job.error = result.status, result.run_id, result.run_name, result.error
        if reporter and reporter.pruned_epoch is not None and result.status == FINISHED:
            job.status = PRUNED
            mlflow_client = client(cfg.mlflow.tracking_uri)
            mlflow_client.update_run(result.run_id, name=f"{result.run_name} (pruned)")
            if cfg.mlflow.log_models:
                retitle_models(mlflow_client, result.run_id, result.run_name, f"{result.run_name} (pruned)")
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
        job.status, job.error = FAILED, redact(first_line(exc))
        if not isinstance(exc, UserError):
            log.exception("job failed")
        raise
    finally:
        job.write(output_dir)
    if job.status == FAILED:
        raise JobFailed(job.error, run_id=job.run_id)  # Hydra prints it as one line; a sweep's summary names the run
    # what a sweeper hears back from the launcher (the optuna sweeper scores the trial from the history)
    return {"status": job.status, "run_id": job.run_id, "history": dict(result.history)}


def _config_dirs_tag(hydra_cfg) -> Dict[str, str]:
    """The job's own config folders (`--config-dir`, hydra.searchpath), absolute, so `src.reproduce` finds its
    options again; none for a job of conf/ alone."""
    folders = [str(Path(source.path).resolve()) for source in hydra_cfg.runtime.config_sources
               if source.schema == "file" and Path(source.path).resolve() != CONFIG_DIR.resolve()]
    return {CONFIG_DIRS_TAG: json.dumps(folders)} if folders else {}


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
