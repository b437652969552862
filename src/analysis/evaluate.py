"""`python -m src.evaluate RUN_ID`: score a run's logged model on its data's rows (any slice of HIGGS), by its task."""

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError, TrackingError, UserError, first_line
from src.analysis.scores import task_scores
from src.data.higgs import HIGGS_LOADER
from src.tracking import store

log = logging.getLogger(__name__)

EVALUATED_RUN_TAG = "evaluated_run_id"
EVALUATED_MODEL_TAG = "evaluated_model"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.evaluate",
        description="Load a run's logged model (its final or best one, named after the run) and score it on rows "
        "of the run's data (for "
        "HIGGS, of any file in the UCI layout), by the run's task: binary cross-entropy, accuracy (probability > 0.5), "
        "ROC AUC and the ROC curve; multiclass cross-entropy, accuracy and the confusion matrix; regression mean "
        f"squared and absolute error and the residuals. Logged as a new run tagged {EVALUATED_RUN_TAG}=RUN_ID (or "
        "only printed, with --no-log).",
        epilog="examples: python -m src.evaluate RUN_ID; python -m src.evaluate RUN_ID --rows 1000:101000 "
        "data.path=/data/HIGGS.csv.gz; exit status: 0 scored, 2 bad input",
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run whose model to score")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="data settings to change from the run's (e.g. data.path=FILE, data.n_validation=5000)")
    parser.add_argument("--model", default="model",
                        help="the run's logged model: model (final) or best_model (each is named after its run)")
    parser.add_argument("--split", choices=("validation", "training"), default="validation",
                        help="the run's validation rows (the first data.n_validation) or its training rows")
    parser.add_argument("--rows", default=None, metavar="START:END",
                        help="rows START to END-1 of the source instead of a split (END empty: to the end); for data "
                        "other than HIGGS, of its validation rows then its training rows")
    parser.add_argument("--tracking-uri", default=None,
                        help="the store holding the run (default: $MLFLOW_TRACKING_URI, else the project's store); "
                        "the evaluation run is logged there too")
    parser.add_argument("--no-log", action="store_true", help="print the scores only; log nothing")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def evaluation_data(cfg: DictConfig, overrides: Sequence[str], split: str, rows: Optional[str]):
    """The rows to score and a description of them, from the run's data config with `overrides` laid over it."""
    data = cfg.data
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.startswith("data.") or key[len("data."):] not in data:
            raise ConfigError(f"{override}: only the run's data.KEY=VALUE settings can be changed")
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)  # type-checked by the schema
        except Exception as exc:  # OmegaConf's validation errors, YAML's
            first = first_line(exc)
            raise ConfigError(f"{override}: {first}") from None
    start, end = _row_range(rows) if rows is not None else (None, None)
    if data._target_ != HIGGS_LOADER:  # the loader's rows, validation first (as HIGGS's file has them)
        return _loaded_rows(cfg, split, rows, start, end)
    from src.data.higgs import source_rows

    if rows is not None:
        what = "rows"
    elif split == "validation":
        start, end, what = 0, data.n_validation, "validation rows"
    else:
        start = data.n_validation
        end = None if data.n_train == -1 else data.n_validation + data.n_train
        what = "training rows"
    got = source_rows(data, end, progress=False)
    selected = got.rows[start:end]
    if len(selected) == 0 or (end is not None and len(got.rows) < end):
        raise ConfigError(f"{what} {start}:{end} of {data.path or data.url}: the source has {len(got.rows)} rows")
    return np.asarray(selected[:, 1:]), np.asarray(selected[:, :1]), f"{what} {start}:{start + len(selected)}"


def _loaded_rows(cfg: DictConfig, split: str, rows: Optional[str], start: Optional[int], end: Optional[int]):
    """Rows of a data option's loader: a split, or --rows over its validation then its training rows."""
    from src.data.loading import load_data

    splits = load_data(cfg.data)
    if rows is None:
        x, y = (splits.x_val, splits.y_val) if split == "validation" else (splits.x_train, splits.y_train)
        return np.asarray(x), np.asarray(y), f"{split} rows 0:{len(x)}"
    x, y = np.concatenate([splits.x_val, splits.x_train]), np.concatenate([splits.y_val, splits.y_train])
    if start >= len(x) or (end is not None and end > len(x)):
        raise ConfigError(f"--rows={rows}: data={cfg.data.name} has {len(x)} rows")
    return x[start:end], y[start:end], f"rows {start}:{start + len(x[start:end])}"


def _row_range(rows: str):
    """--rows START:END as (start, end); END None: to the end."""
    start_text, sep, end_text = rows.partition(":")
    try:
        start, end = int(start_text or 0), (int(end_text) if end_text else None)
    except ValueError:
        raise ConfigError(f"--rows={rows}: expected START:END, e.g. 0:1000") from None
    if not sep or start < 0 or (end is not None and end <= start):
        raise ConfigError(f"--rows={rows}: expected START:END with 0 <= START < END")
    return start, end


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = args.tracking_uri or store.default_tracking_uri()
    try:
        from src.tracking.logged_config import logged_config

        client = store.open_store(uri)
        run = store.get_run(client, args.run_id, uri)
        cfg, _, _ = logged_config(client, run, on_parent="it has no model of its own: evaluate one of its children "
                                                          "(the runs tagged mlflow.parentRunId={run_id})")
        x, y, described = evaluation_data(cfg, args.overrides, args.split, args.rows)
        outputs, model_id = _predict(uri, client, args.run_id, args.model, x)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = f"evaluate-{run.info.run_name}-{args.model}"
    task = getattr(cfg.task, "value", cfg.task)
    values, figures = task_scores(task, y, outputs, f"{name} on {described}")
    source = OmegaConf.select(cfg, "data.path", default=None) or OmegaConf.select(cfg, "data.url", default=None) \
        or cfg.data.name
    print(f"{name}: {described} of {store.redact(source)}")
    for key, value in values.items():
        print(f"  {key:<20} {value:,.0f}" if key == "rows" else f"  {key:<20} {value:.6f}")
    if args.no_log:
        return 0
    new_id = _log_evaluation(client, run, args.model, model_id, values, figures, described, str(source), x, y)
    print(f"logged as run {new_id} ({EVALUATED_RUN_TAG}={args.run_id}), nested under it; the model's page shows "
          f"its {EVAL_PREFIX}* metrics")
    return 0


EVAL_PREFIX = "eval_"  # an evaluation's metrics: never the names training runs log (its charts would mix them)
LAST_EVALUATION_TAG = "last_evaluation_run_id"  # on the scored run: its newest evaluation


def _log_evaluation(client, run, model_name: str, model_id: Optional[str], values, figures, described: str,
                    source: str, x: np.ndarray, y: np.ndarray) -> str:
    """The evaluation as a run nested under the run it scored (which points back to it), with the scored rows as its
    dataset and its metrics attached to the logged model too; ended FAILED if logging it fails half-way."""
    import mlflow.data
    from mlflow.entities import Metric, Param

    from src.analysis import plots
    from src.data.splits import rows_sha256
    from src.tracking.datasets import dataset_source, log_datasets, shown_digest
    from src.tracking.provenance import source_tags
    from src.tracking.store import PARENT_TAG

    scored = mlflow.data.from_numpy(x, targets=y, source=dataset_source(source), name=f"evaluation-{described}",
                                    digest=shown_digest(rows_sha256(x, y)))
    note = (f"Evaluation of the logged model `{model_name}` of run [{run.info.run_name}](#/experiments/"
            f"{run.info.experiment_id}/runs/{run.info.run_id}) on {described} of {store.redact(source)}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    tags = {**source_tags("src.evaluate"), EVALUATED_RUN_TAG: run.info.run_id, EVALUATED_MODEL_TAG: model_name,
            PARENT_TAG: run.info.run_id, "mlflow.note.content": note}
    new_id = client.create_run(run.info.experiment_id, run_name=f"evaluate-{run.info.run_name}-{model_name}",
                               tags=tags).info.run_id
    status = "FAILED"
    try:
        log_datasets(client, new_id, {"evaluation": scored})
        now = int(time.time() * 1000)
        metrics = [Metric(f"{EVAL_PREFIX}{k}", v, now, 0, model_id=model_id, dataset_name=scored.name,
                          dataset_digest=scored.digest) for k, v in values.items()]
        client.log_batch(new_id, metrics=metrics,
                         params=[Param("rows", described), Param("source", store.redact(source))])
        for artifact, figure in figures.items():
            client.log_figure(new_id, figure, artifact)
        client.set_tag(run.info.run_id, LAST_EVALUATION_TAG, new_id)
        status = "FINISHED"
    finally:
        plots.close(figures)
        client.set_terminated(new_id, status)
    return new_id


def _predict(uri: str, client, run_id: str, role: str, x: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
    """The outputs for `x` (probabilities, or a regression's values) of the run's logged model of `role` (FINAL or
    BEST, whatever its name) and its model ID; a one-line error when the run has no such model."""
    import mlflow
    import mlflow.pyfunc

    from src.tracking.models import require_logged_model

    mlflow.set_tracking_uri(uri)
    import keras

    keras.utils.disable_interactive_logging()  # the flavor's predict would draw a progress bar on stdout
    model_uri = require_logged_model(client, run_id, role)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # MLflow raises its own, or OSError, by artifact store
        first = first_line(exc)
        raise TrackingError(f"run {run_id}: its logged model {role!r} ({model_uri}) does not load: {first}") from None
    outputs = np.asarray(model.predict(x))
    model_id = getattr(model.metadata, "model_id", None)  # MLflow 3's logged model, which the metrics attach to
    return (outputs.reshape(-1) if outputs.ndim == 2 and outputs.shape[1] == 1 else outputs), model_id

