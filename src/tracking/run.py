"""A run being written: per-epoch metrics, models, artifacts and tags, behind one protocol that a tracked run (the
store) and an untracked one (a multi-worker cluster's non-chief worker: nowhere) both keep."""

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol
from urllib.parse import urlsplit

from src.core import compat
from src.core.metrics import is_system_metric, store_metric_name
from src.core.runstates import FAILED
from src.tracking import models
from src.tracking.claims import RESUME_CLAIM_TAG, RunTakenOver
from src.tracking.liveness import claim_owner
from src.tracking.store import client, metric_histories
from src.tracking.writer import MetricWriter

log = logging.getLogger(__name__)



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
    ui_url: str = "http://127.0.0.1:5000"  # where `make ui` serves a local store (mlflow.ui_url)

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
        run = self.client.get_run(self.run_id)  # system metrics count samples, not epochs: left out
        logged = metric_histories(self.client, run, [key for key in run.data.metrics if not is_system_metric(key)])
        self.already_logged = {step for steps in logged.values() for step in steps}
        for epoch in range(len(next(iter(history.values()), []))):
            metrics = {key: values[epoch] for key, values in history.items()}
            for key, value in metrics.items():
                self.result.history.setdefault(key, []).append(float(value))
            if epoch not in self.already_logged:
                self.writer.submit(epoch, {store_metric_name(key): value for key, value in metrics.items()})

    def log_model(self, model, role: str, *, step: int, example, weights: str,
                  tags: Optional[Dict[str, str]] = None) -> str:
        """A Keras model in MLflow's Keras flavor (with a signature and `example` rows as its input example), linked
        to this run at `step`: named after the run, described (`weights`: which, of which epoch) and tagged with its
        `role` (models.FINAL or BEST), it shows in the UI's "Logged models" and loads as `models:/<its ID>`. Its ID."""
        import keras
        import mlflow
        import numpy as np
        import tensorflow as tf
        from mlflow.models import Model, infer_signature

        # MLflow's model logging goes through its fluent state: the store and the experiment the logged model
        # belongs to (without it, the model lands in experiment 0 and `runs:/` cannot find it)
        name = models.model_name(self.run_name, role)
        tags = {**(tags or {}), models.ROLE_TAG: role,
                models.NOTE_TAG: models.model_note(self.run_name, self.run_id, self.experiment_id, role, weights)}
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
        """Where to see the run: the tracking server's own UI, or `make ui` (at mlflow.ui_url) over a local store."""
        link = ui_link(self.tracking_uri, self.ui_url, f"#/experiments/{self.experiment_id}/runs/{self.run_id}")
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"MLflow run ID {self.run_id}: {link}"
        return f"MLflow run ID {self.run_id}: open it with `make ui`, then {link}"


def ui_link(tracking_uri: str, ui_url: str, page: str) -> str:
    """A page of the MLflow UI that shows this store: the tracking server's own, else `make ui`'s at `ui_url`. The
    workflow type opens MLflow 3's "Model training" pages in a fresh browser (else its GenAI pages)."""
    page += ("&" if "?" in page else "?") + "workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        parts = urlsplit(tracking_uri)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")  # never the credentials
        return f"{parts.scheme}://{host}{parts.path.rstrip('/')}/{page}"
    return f"{ui_url.rstrip('/')}/{page}"


class UntrackedRun:
    """The run on a multi-worker cluster's non-chief worker: it keeps the history the loop and early stopping
    read, and writes nothing anywhere (the chief logs the run). Each write of `Run` is a no-op, said so here."""

    def __init__(self, run_name: str):
        self.run_name, self.run_id = run_name, None
        self.result = RunResult(run_name, FAILED)

    def log_epoch(self, epoch: int, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            self.result.history.setdefault(key, []).append(float(value))

    def log_checkpoint(self, path: Path, artifact_path: str) -> None:
        """Nothing: the chief's checkpoints are the run's (every worker holds the same state)."""

    def log_model(self, model, role: str, *, step: int, example, weights: str,
                  tags: Optional[Dict[str, str]] = None) -> None:
        """Nothing: the chief logs the models."""

    def set_tags(self, tags: Dict[str, str]) -> None:
        """Nothing: the chief tags the run."""

    def log_figures(self, figures: Dict[str, Any]) -> None:
        """Nothing: the chief logs the figures."""

    def ui_hint(self) -> str:
        return "a non-chief worker: the chief logged the run"


class Run(Protocol):
    """What training writes to a run, whether the store keeps it (TrackedRun) or nothing does (UntrackedRun)."""

    run_id: Optional[str]
    run_name: str
    result: RunResult

    def log_epoch(self, epoch: int, metrics: Dict[str, float]) -> None: ...

    def log_checkpoint(self, path: Path, artifact_path: str) -> None: ...

    def log_model(self, model, role: str, *, step: int, example, weights: str,
                  tags: Optional[Dict[str, str]] = None) -> Any: ...

    def set_tags(self, tags: Dict[str, str]) -> None: ...

    def log_figures(self, figures: Dict[str, Any]) -> None: ...

    def ui_hint(self) -> str: ...
