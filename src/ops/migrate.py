"""`python -m src.migrate --to URI [--from URI] [--experiment NAME ...]`: copy runs from one MLflow store into another,
e.g. the default SQLite store into a tracking server on PostgreSQL (`make migrate TO=http://127.0.0.1:5000`).

Each run is copied whole: name, start and end time, end state, params, tags, every metric's full history (steps
and timestamps), datasets and artifacts (its config.yaml included, so `src.reproduce` works on the copy), and its
logged models (MLflow 3 keeps them outside the run's artifacts): each one's name, params, tags, model type, status,
files (MLmodel included, its IDs pointed at the copy) and metrics, linked to the run's copy as its output at the same
step, so `runs:/<new ID>/<model name>` loads and the UI lists it under the run. Sweep parents are copied before their
children, which then point at the copies. The destination gives each copy a new run ID (and model ID); the copy is
tagged `migrated_from` with the original's, so running the command again copies only what is new (a run copied
before models were copied gets its models then). A run or model that fails to copy is deleted from the destination
(never left half-copied, never a half model marked READY) and the command stops.

MLflow has no official tool for this in its releases (mlflow-export-import's last PyPI release, 1.2.0, predates
MLflow 3); this is the MLflow client API, run by run.
"""

import argparse
import contextlib
import re
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from src.core.errors import TrackingError, UserError, first_line
from src.core.interrupts import handle_interrupts, signals_blocked
from src.core.redaction import redact
from src.tracking.models import NOTE_TAG, every_page
from src.tracking.store import (PARENT_TAG, artifact_folder, default_tracking_uri, ensure_store, experiment_id,
                                open_store, store_identity)

MIGRATED_FROM_TAG = "migrated_from"  # the original run's (or logged model's) ID, on its finished copy
MIGRATING_FROM_TAG = "migrating_from"  # the same on a copy being made: one without the other is a leftover
MIGRATED_FROM_STORE_TAG = "migrated_from_store"  # the source store's URI, credentials redacted
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
PARAMS_BATCH = 100  # params per log_batch call (MLflow's limit)
EVERY_RUN = {"max_results": 1000, "order_by": ["attributes.start_time ASC"]}  # every active run, oldest first


class MigrationError(UserError):
    """A run could not be copied; the partial copy was removed."""


def _point_mlmodel_at(mlmodel: Path, model, copy, run_id: str) -> None:
    """The copied MLmodel file names the copy (its model ID, artifact location and run) where it named the original."""
    import yaml

    if not mlmodel.is_file():
        return
    fields = yaml.safe_load(mlmodel.read_text())
    if not isinstance(fields, dict):
        return
    for key, old, new in (("model_id", model.model_id, copy.model_id), ("model_uuid", model.model_id, copy.model_id),
                          ("artifact_path", model.artifact_location, copy.artifact_location),
                          ("run_id", model.source_run_id, run_id)):
        if fields.get(key) == old:
            fields[key] = new
    mlmodel.write_text(yaml.safe_dump(fields, default_flow_style=False))  # as MLflow writes it


def _discard_model(destination, model_id: str) -> None:
    """A model copy that cannot be finished: marked FAILED, then deleted (best effort: the next migration deletes a
    copy left without its `migrated_from` tag)."""
    from mlflow.entities import LoggedModelStatus

    for step in (lambda: destination.finalize_logged_model(model_id, LoggedModelStatus.FAILED),
                 lambda: destination.delete_logged_model(model_id)):
        with contextlib.suppress(Exception):
            step()


def copy_model(source_uri: str, destination, model, experiment_id: str, run_id: str, source_run_id: str,
               step: Optional[int], origin: str) -> str:
    """Copy one logged model of run `source_run_id` as a logged model of its copy `run_id`, with the client API as
    `mlflow.<flavor>.log_model` makes one: create it (PENDING), upload its files, log its metrics through the run, link
    it as the run's output at `step` (None: the original was not linked), finalize it with the original's status,
    and only then tag it `migrated_from`. On any failure the copy is discarded and the error raised. The copy's ID."""
    from mlflow.artifacts import download_artifacts, list_artifacts
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    moved = (f"/experiments/{model.experiment_id}/runs/{source_run_id}", f"/experiments/{experiment_id}/runs/{run_id}")
    tags = {k: v.replace(*moved).replace(source_run_id, run_id) if k == NOTE_TAG else v  # its description: the copy's
            for k, v in model.tags.items() if k not in (MIGRATED_FROM_TAG, MIGRATING_FROM_TAG)}
    tags.update({MIGRATING_FROM_TAG: model.model_id, MIGRATED_FROM_STORE_TAG: origin})
    copy = destination.create_logged_model(experiment_id, name=model.name, source_run_id=run_id, tags=tags,
                                           params=dict(model.params) or None, model_type=model.model_type)
    try:
        if list_artifacts(artifact_uri=model.artifact_location, tracking_uri=source_uri):
            with tempfile.TemporaryDirectory(prefix="overfit-lab-migrate-model-") as folder:
                local = download_artifacts(artifact_uri=model.artifact_location, dst_path=folder,
                                           tracking_uri=source_uri)
                _point_mlmodel_at(Path(local) / "MLmodel", model, copy, run_id)
                destination.log_model_artifacts(copy.model_id, local)
        # a model's metrics are logged through a run; those its own run logged (log_model copies the run's metrics
        # of its step) go through the run's copy, which has them already, so its history is unchanged
        metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=copy.model_id, dataset_name=m.dataset_name,
                          dataset_digest=m.dataset_digest)
                   for m in model.metrics or () if m.run_id == source_run_id]
        for i in range(0, len(metrics), BATCH):
            destination.log_batch(run_id, metrics=metrics[i:i + BATCH])
        if step is not None:
            destination.log_outputs(run_id, [LoggedModelOutput(copy.model_id, step)])
        status = LoggedModelStatus(str(model.status))
        if status in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):
            destination.finalize_logged_model(copy.model_id, status)
        destination.set_logged_model_tags(copy.model_id, {MIGRATED_FROM_TAG: model.model_id})
    except BaseException:
        _discard_model(destination, copy.model_id)
        raise
    return copy.model_id


def _copy_models(source_uri: str, destination, run, models: Iterable, experiment_id: str, new_id: str,
                 origin: str, copied: List[str]) -> None:
    """Copy `models` of `run` to its copy `new_id`, appending each copy's ID to `copied` as it is finished."""
    steps = {output.model_id: output.step for output in (run.outputs.model_outputs if run.outputs else ())}
    for model in models:
        copied.append(copy_model(source_uri, destination, model, experiment_id, new_id, run.info.run_id,
                                 steps.get(model.model_id), origin))


def _failure(run, exc: BaseException, what: str = "") -> MigrationError:
    """The one-line error of a copy that failed, its cause's first line with any credentials redacted."""
    first = redact(first_line(exc))
    return MigrationError(f"run {run.info.run_id} ({run.info.run_name}){what} could not be copied, nothing of it "
                          f"kept: {first}")


def copy_run(source, destination, run, experiment_id: str, parent_id: Optional[str], origin: str,
             source_uri: Optional[str] = None, models: Sequence = ()) -> str:
    """Copy one run and its logged `models` (see the module's docstring; `source_uri`, the source store's URI, is
    needed for models); the copy's ID."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {k: v for k, v in run.data.tags.items() if k != PARENT_TAG}
    tags[MIGRATED_FROM_TAG] = run.info.run_id
    tags[MIGRATED_FROM_STORE_TAG] = origin
    if parent_id:
        tags[PARENT_TAG] = parent_id
    copy = destination.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                                  tags={MIGRATING_FROM_TAG: run.info.run_id})
    new_id = copy.info.run_id
    model_copies: List[str] = []
    try:
        params = [Param(k, v) for k, v in run.data.params.items()]
        for i in range(0, len(params), PARAMS_BATCH):
            destination.log_batch(new_id, params=params[i:i + PARAMS_BATCH])
        metrics = [Metric(m.key, m.value, m.timestamp, m.step)
                   for key in run.data.metrics for m in source.get_metric_history(run.info.run_id, key)]
        for i in range(0, len(metrics), BATCH):
            destination.log_batch(new_id, metrics=metrics[i:i + BATCH])
        if run.inputs and run.inputs.dataset_inputs:
            destination.log_inputs(new_id, datasets=list(run.inputs.dataset_inputs))
        if source.list_artifacts(run.info.run_id):
            with tempfile.TemporaryDirectory(prefix="overfit-lab-migrate-") as folder:
                local = source.download_artifacts(run.info.run_id, "", folder)
                destination.log_artifacts(new_id, local)
        if models:
            _copy_models(source_uri, destination, run, models, experiment_id, new_id, origin, model_copies)
        # the tags last: a copy is marked as one (migrated_from) only once everything else is there
        destination.log_batch(new_id, tags=[RunTag(k, v) for k, v in tags.items()])
        destination.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    except BaseException as exc:
        with signals_blocked():  # a second Ctrl-C must not leave the half-made copy RUNNING
            for model_id in model_copies:  # finished, but on a run copy that is not
                _discard_model(destination, model_id)
            destination.set_terminated(new_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            destination.delete_run(new_id)
        if isinstance(exc, Exception):
            raise _failure(run, exc) from None
        raise
    return new_id


def _opened(uri: str, option: str, create: bool = False):
    """The store's client; its one-line errors name this command's option, not src.train's key mlflow.tracking_uri."""
    try:
        if create:
            ensure_store(uri)
        return open_store(uri)
    except TrackingError as exc:
        named = re.sub(r"^(?:mlflow\.tracking_uri|--tracking-uri)(=?)", lambda m: option + " " * len(m.group(1)), str(exc))
        raise MigrationError(named) from None


def migrate(source_uri: str, destination_uri: str, experiments: Sequence[str] = ()) -> Dict[str, str]:
    """Copy every finished or stopped run of the named experiments (default: all) not copied before, with its logged
    models (and the models of runs copied before that lack them); {old run ID: new run ID} of the runs copied."""
    from mlflow.entities import RunStatus

    if store_identity(source_uri) == store_identity(destination_uri):
        raise MigrationError(f"--to {redact(destination_uri)}: the same store as --from; a store is never its own "
                             "destination")
    source = _opened(source_uri, "--from")
    names = {e.name for e in source.search_experiments()}
    unknown = [name for name in experiments if name not in names]
    if unknown:
        raise MigrationError(f"--experiment {', '.join(unknown)}: no such experiment in {redact(source_uri)} "
                             f"(it has: {', '.join(sorted(names))})")
    destination = _opened(destination_uri, "--to", create=True)
    origin = redact(source_uri)
    copied: Dict[str, str] = {}
    for experiment in source.search_experiments():
        if experiments and experiment.name not in experiments:
            continue
        target = destination.get_experiment_by_name(experiment.name)
        target_id = target.experiment_id if target else experiment_id(
            destination_uri, experiment.name, artifact_folder(destination_uri))  # beside its store, never ./mlruns
        done = {}
        present = set()  # the destination's runs: a source run copied from one of them is going home, not copied
        for copy in every_page(destination.search_runs, target_id, **EVERY_RUN):
            present.add(copy.info.run_id)
            if MIGRATED_FROM_TAG in copy.data.tags:
                done[copy.data.tags[MIGRATED_FROM_TAG]] = copy.info.run_id
            elif MIGRATING_FROM_TAG in copy.data.tags:  # a copy a killed migration left half-made
                destination.delete_run(copy.info.run_id)
        finished = set(done.values())
        models_done = set()  # the source's logged models with a finished copy on a finished run copy
        for copy in every_page(destination.search_logged_models, target_id):
            if MIGRATING_FROM_TAG not in copy.tags:
                continue  # not a copy
            if MIGRATED_FROM_TAG in copy.tags and copy.source_run_id in finished:
                models_done.add(copy.tags[MIGRATED_FROM_TAG])
            else:  # half-made, or its run's copy was deleted as half-made
                destination.delete_logged_model(copy.model_id)
        models_of: Dict[str, list] = {}
        every_model = every_page(source.search_logged_models, experiment.experiment_id)
        for model in sorted(every_model, key=lambda m: m.creation_timestamp):
            if model.source_run_id and model.model_id not in models_done:
                models_of.setdefault(model.source_run_id, []).append(model)
        runs = [r for r in every_page(source.search_runs, experiment.experiment_id, **EVERY_RUN)
                if r.info.status != RunStatus.to_string(RunStatus.RUNNING)]  # still being written: next time
        runs.sort(key=lambda r: PARENT_TAG in r.data.tags)  # parents before their children (stable: by time)
        for run in runs:
            models = models_of.get(run.info.run_id, [])
            names = f" (models: {', '.join(m.name for m in models)})" if models else ""
            if run.info.run_id in done:  # copied before: only its models not copied yet
                if models:
                    _backfill_models(source_uri, destination, run, models, target_id, done[run.info.run_id], origin)
                    print(f"{experiment.name}: {run.info.run_id} -> {done[run.info.run_id]}  {run.info.run_name}"
                          f"{names}", file=sys.stderr)
                continue
            if run.data.tags.get(MIGRATED_FROM_TAG) in present:  # a copy of a run the destination holds itself
                done[run.info.run_id] = run.data.tags[MIGRATED_FROM_TAG]
                continue
            parent = run.data.tags.get(PARENT_TAG)
            new_id = copy_run(source, destination, run, target_id, done.get(parent, parent), origin, source_uri,
                              models)
            done[run.info.run_id] = copied[run.info.run_id] = new_id
            print(f"{experiment.name}: {run.info.run_id} -> {new_id}  {run.info.run_name}{names}", file=sys.stderr)
    return copied


def _backfill_models(source_uri: str, destination, run, models: Sequence, experiment_id: str, new_id: str,
                     origin: str) -> None:
    """The logged models of a run copied before (by a migration that did not copy models), onto its copy; a model
    that fails to copy is discarded (the run's copy stays) and the command stops."""
    try:
        _copy_models(source_uri, destination, run, models, experiment_id, new_id, origin, [])
    except Exception as exc:
        raise _failure(run, exc, ": a logged model") from None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.migrate",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--to", required=True, help="the destination tracking URI, e.g. http://127.0.0.1:5000")
    parser.add_argument("--from", dest="source", default=None,
                        help="the source tracking URI (default: MLFLOW_TRACKING_URI, else the project's store)")
    parser.add_argument("--experiment", action="append", default=[],
                        help="copy only this experiment (repeatable; default: every experiment)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per run and model otherwise
    source = args.source or default_tracking_uri()
    handle_interrupts()  # SIGTERM and SIGHUP as Ctrl-C: the run being copied is removed, never left RUNNING
    try:
        copied = migrate(source, args.to, args.experiment)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the run being copied was removed; the runs copied before it stay (run again to go on)",
              file=sys.stderr)
        return 130
    print(f"{len(copied)} runs copied from {redact(source)} to {redact(args.to)}", file=sys.stderr)
    return 0

