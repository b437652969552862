"""`python -m src.migrate --to URI [--from URI] [--experiment NAME ...]`: copy runs from one MLflow store into another,
e.g. the default SQLite store into a tracking server on PostgreSQL (`make migrate TO=http://127.0.0.1:5000`).

Each run is copied whole: name, start and end time, end state, params, tags, every metric's full history (steps
and timestamps), datasets and artifacts (its config.yaml included, so `src.reproduce` works on the copy). Sweep
parents are copied before their children, which then point at the copies. The destination gives each copy a new
run ID; the copy is tagged `migrated_from` with the original's, so running the command again copies only what is
new. A run that fails to copy is deleted from the destination (never left half-copied) and the command stops.

MLflow has no official tool for this in its releases (mlflow-export-import's last PyPI release, 1.2.0, predates
MLflow 3); this is the MLflow client API, run by run.
"""

import argparse
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from src.errors import UserError
from src.redaction import redact
from src.store import PARENT_TAG, default_tracking_uri, ensure_store, open_store

MIGRATED_FROM_TAG = "migrated_from"  # the original run's ID, on its finished copy
MIGRATING_FROM_TAG = "migrating_from"  # the same on a copy being made: one without the other is a leftover
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
PARAMS_BATCH = 100  # params per log_batch call (MLflow's limit)


class MigrationError(UserError):
    """A run could not be copied; the partial copy was removed."""


def _all_runs(mlflow_client, experiment_id: str) -> list:
    """Every active run of an experiment, oldest first, through as many pages as there are."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], max_results=1000, page_token=token,
                                         order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def copy_run(source, destination, run, experiment_id: str, parent_id: Optional[str], origin: str) -> str:
    """Copy one run (see the module's docstring); the copy's ID."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {k: v for k, v in run.data.tags.items() if k != PARENT_TAG}
    tags[MIGRATED_FROM_TAG] = run.info.run_id
    tags["migrated_from_store"] = origin
    if parent_id:
        tags[PARENT_TAG] = parent_id
    copy = destination.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                                  tags={MIGRATING_FROM_TAG: run.info.run_id})
    new_id = copy.info.run_id
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
        # the tags last: a copy is marked as one (migrated_from) only once everything else is there
        destination.log_batch(new_id, tags=[RunTag(k, v) for k, v in tags.items()])
        destination.set_terminated(new_id, status=run.info.status, end_time=run.info.end_time)
    except BaseException as exc:
        destination.delete_run(new_id)
        if isinstance(exc, Exception):
            raise MigrationError(f"run {run.info.run_id} ({run.info.run_name}) could not be copied, nothing of it "
                                 f"kept: {redact((str(exc).splitlines() or [type(exc).__name__])[0])}") from None
        raise
    return new_id


def migrate(source_uri: str, destination_uri: str, experiments: Sequence[str] = ()) -> Dict[str, str]:
    """Copy every finished or stopped run of the named experiments (default: all) not copied before; {old: new}."""
    from mlflow.entities import RunStatus

    source = open_store(source_uri)
    ensure_store(destination_uri)
    destination = open_store(destination_uri)
    origin = redact(source_uri)
    copied: Dict[str, str] = {}
    for experiment in source.search_experiments():
        if experiments and experiment.name not in experiments:
            continue
        target = destination.get_experiment_by_name(experiment.name)
        target_id = target.experiment_id if target else destination.create_experiment(experiment.name)
        done = {}
        for copy in _all_runs(destination, target_id):
            if MIGRATED_FROM_TAG in copy.data.tags:
                done[copy.data.tags[MIGRATED_FROM_TAG]] = copy.info.run_id
            elif MIGRATING_FROM_TAG in copy.data.tags:  # a copy a killed migration left half-made
                destination.delete_run(copy.info.run_id)
        runs = [r for r in _all_runs(source, experiment.experiment_id)
                if r.info.status != RunStatus.to_string(RunStatus.RUNNING)]  # still being written: next time
        runs.sort(key=lambda r: PARENT_TAG in r.data.tags)  # parents before their children (stable: by time)
        for run in runs:
            if run.info.run_id in done:
                continue
            parent = run.data.tags.get(PARENT_TAG)
            new_id = copy_run(source, destination, run, target_id, done.get(parent, parent), origin)
            done[run.info.run_id] = copied[run.info.run_id] = new_id
            print(f"{experiment.name}: {run.info.run_id} -> {new_id}  {run.info.run_name}", file=sys.stderr)
    return copied


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, help="the destination tracking URI, e.g. http://127.0.0.1:5000")
    parser.add_argument("--from", dest="source", default=None,
                        help="the source tracking URI (default: MLFLOW_TRACKING_URI, else the project's store)")
    parser.add_argument("--experiment", action="append", default=[],
                        help="copy only this experiment (repeatable; default: every experiment)")
    args = parser.parse_args(argv)
    source = args.source or default_tracking_uri()
    try:
        copied = migrate(source, args.to, args.experiment)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{len(copied)} runs copied from {redact(source)} to {redact(args.to)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
