"""`python -m src.train`: train one config (or a sweep with `-m`) and track it in MLflow."""

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.config import run_name, validate
from src.data import load_higgs
from src.errors import UserError
from src.tracking import (
    config_digest,
    ensure_store,
    finished_run_with_digest,
    read_parent_run_id,
    write_job_result,
)

log = logging.getLogger(__name__)


def train(
    cfg: DictConfig,
    *,
    parent_run_id: Optional[str] = None,
    overrides: Optional[List[str]] = None,
    extra_tags: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """Train one config into one MLflow run; returns its run ID, status and metric history."""
    validate(cfg)
    cfg = _with_absolute_data_path(cfg)
    # the cheap checks first: config, then data, then the store (importing MLflow takes seconds)
    splits = load_higgs(cfg.data)
    ensure_store(cfg.mlflow.tracking_uri)
    name = run_name(cfg)
    if cfg.resume:
        done = finished_run_with_digest(cfg, config_digest(cfg))
        if done:
            log.info("resume: %s already FINISHED as run %s; skipped", name, done)
            return {"status": "SKIPPED", "run_id": done, "run_name": name, "history": {}}

    # TensorFlow is imported only now: bad config, data or store is reported before its ~9 s import.
    import mlflow.data

    from src import loops, plots, runtime
    from src.data import make_datasets
    from src.models import build_model
    from src.tracking import dataset_source, tracked_run

    runtime.configure_threads(cfg.train.threads)
    devices = runtime.configure_devices(cfg.device, cfg.train.logical_cpus)
    strategy = runtime.make_strategy(cfg.train.strategy, devices)
    runtime.configure_determinism(cfg.train.deterministic)
    runtime.seed_everything(cfg.seed)
    train_ds, val_ds = make_datasets(splits, cfg.train.batch_size, cfg.seed)
    with strategy.scope():
        model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
    source = dataset_source(splits.source)
    datasets = {
        "training": mlflow.data.from_numpy(splits.x_train, targets=splits.y_train, source=source, name="higgs-train"),
        "validation": mlflow.data.from_numpy(splits.x_val, targets=splits.y_val, source=source, name="higgs-val"),
    }
    common = dict(
        strategy=strategy,
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.data.n_train // cfg.train.batch_size,
        learning_rate=cfg.train.learning_rate,
        jit_compile=cfg.train.jit_compile,
        progress=not cfg.quiet,
    )
    tags = {**runtime.device_tags(strategy, devices), **(extra_tags or {})}
    with tracked_run(
        cfg, run_name=name, parent_run_id=parent_run_id, overrides=overrides, datasets=datasets, extra_tags=tags
    ) as run:
        log.info("run %s: %s", run.run_id, name)
        if cfg.loop.name == "fit":
            loops.run_fit(model, train_ds, val_ds, on_epoch_end=run.log_epoch, **common)
        else:
            loops.run_tape(
                model,
                train_ds,
                val_ds,
                include_reg_loss=cfg.loop.include_reg_loss,
                compile=cfg.loop.compile,
                on_epoch_end=run.log_epoch,
                **common,
            )
        figures = plots.run_figures(run.history, name)
        for artifact_file, figure in figures.items():
            run.log_figure(figure, artifact_file)
        plots.close(figures)
    log.info("%s FINISHED. %s", name, run.ui_hint())
    return {"status": "FINISHED", "run_id": run.run_id, "run_name": name, "history": run.history}


def _with_absolute_data_path(cfg: DictConfig) -> DictConfig:
    """A copy whose `data.path` is absolute, so the logged config reruns from any directory."""
    cfg = cfg.copy()
    if cfg.data.path is not None:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


def _job_threads(cfg: DictConfig, hydra_cfg) -> int:
    """`train.threads`, or with 0 under a parallel launcher, this job's share of the cores."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if cfg.train.threads or hydra_cfg.mode != RunMode.MULTIRUN or not n_jobs:
        return cfg.train.threads
    cores = len(os.sched_getaffinity(0))
    n_jobs = cores if n_jobs < 0 else n_jobs
    return max(1, cores // n_jobs)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one job of a run or a sweep."""
    # SIGTERM ends the run like Ctrl-C: KILLED in MLflow, never left RUNNING.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    parent_run_id = read_parent_run_id(Path(hydra_cfg.sweep.dir)) if multirun else None
    cfg.train.threads = _job_threads(cfg, hydra_cfg)
    result: Dict[str, Any] = {
        "job": hydra_cfg.job.num if multirun else 0,
        "status": "RUNNING",
        "run_name": run_name(cfg),
        "overrides": overrides,
    }
    write_job_result(output_dir, result)
    try:
        outcome = train(cfg, parent_run_id=parent_run_id, overrides=overrides)
        result.update(status=outcome["status"], run_id=outcome["run_id"], run_name=outcome["run_name"])
    except KeyboardInterrupt as exc:
        result.update(status="KILLED", error="interrupted", run_id=getattr(exc, "mlflow_run_id", None))
        raise
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        result.update(status="FAILED", error=first_line, run_id=getattr(exc, "mlflow_run_id", None))
        if not isinstance(exc, UserError):
            log.exception("job failed")
        raise
    finally:
        write_job_result(output_dir, result)


def _one_line(exc: Exception) -> str:
    """A Hydra composition error as one line that names the override."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and "/" in (exc.missing_cfg_file or ""):
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = [o for o in exc.options or [] if not o.endswith("_schema")]
        return f"{group}={option}: no such option (available: {', '.join(options)})"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {text}"
    if exc.__cause__ is not None and str(exc.__cause__).strip():
        text += ": " + str(exc.__cause__).strip().splitlines()[0]
    return text


def _one_line_config_errors() -> None:
    """Make Hydra print a bad override as one line (it prints several: option lists, full_key, hints)."""
    import hydra._internal.utils as hydra_utils  # hydra-core 1.3: _run_hydra calls this module global
    from hydra.errors import ConfigCompositionException, OverrideParseException

    report = hydra_utils.run_and_report

    def run_and_report(func):
        def condensed():
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as exc:
                if os.environ.get("HYDRA_FULL_ERROR"):
                    raise
                print(_one_line(exc), file=sys.stderr)
                sys.exit(1)

        return report(condensed)

    hydra_utils.run_and_report = run_and_report


if __name__ == "__main__":
    _one_line_config_errors()
    try:
        main()
    except KeyboardInterrupt:
        # The run (and the sweep's parent run) are already marked KILLED.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
