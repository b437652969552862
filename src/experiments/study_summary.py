"""A search's summary on its MLflow parent run: the best trial's values (tags) and value, the trial counts, Optuna's
figures."""

import logging
import time
from typing import Any, Dict

from src.core.errors import first_line
from src.experiments.search import Objective
from src.tracking.store import client

log = logging.getLogger(__name__)


def record_study(study, objective: Objective, parent_run_id: str, tracking_uri: str) -> Dict[str, Any]:
    """Log the best trial's values (as `best.*` tags) and value, the trial counts and Optuna's figures on the parent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    mlflow_client = client(tracking_uri)
    _recount(mlflow_client, parent_run_id, len(study.trials))
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    counts = dict.fromkeys(names.values(), 0)
    for trial in study.trials:
        if trial.state in names:
            counts[names[trial.state]] += 1
    summary: Dict[str, Any] = {f"trials_{state}": n for state, n in counts.items()}
    metrics = dict(summary)
    tags = {"optuna.study": study.study_name, "optuna.objective": f"{objective.direction} {objective.name}"}
    if counts["complete"]:
        best = study.best_trial
        metrics[objective.name] = best.value
        tags.update({"optuna.best_trial": str(best.number), **{f"best.{k}": str(v) for k, v in best.params.items()}})
        if "run_id" in best.user_attrs:
            tags["optuna.best_run_id"] = best.user_attrs["run_id"]
        # never as params: MLflow's cannot change, so a continued search's later best would sit beside a stale
        # value; the best.* tags are refreshed after every batch (the trials hold the values as their params)
        _describe_best(mlflow_client, parent_run_id, best, objective.name)
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow_client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for key, value in tags.items():
        mlflow_client.set_tag(parent_run_id, key, value)
    for name, figure in _study_figures(study).items():
        mlflow_client.log_figure(parent_run_id, figure, f"optuna/{name}.png")
        plt.close(figure)
    return summary


def _study_figures(study) -> Dict[str, Any]:
    """Optuna's optimization history and parameter importances (the latter needs two complete trials, and two
    parameters to say anything: one parameter always has all the importance, and fANOVA's forest takes ~1.4 s)."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    figures = {"optimization_history": ovm.plot_optimization_history} if complete else {}
    if complete >= 2 and len({name for trial in study.trials for name in trial.params}) >= 2:
        figures["param_importances"] = ovm.plot_param_importances
    made = {}
    for name, plot in figures.items():
        try:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.2: a warning on every call
                warnings.simplefilter("ignore")
                made[name] = plot(study).figure
        except Exception as exc:  # a figure is a nicety: never fail a finished search over one
            log.warning("optuna figure %s not made: %s", name, first_line(exc))
    return made


def _recount(mlflow_client, parent_run_id: str, trials: int) -> None:
    """The parent's name and description count every trial of the study: a continued search adds to them."""
    import re

    run = mlflow_client.get_run(parent_run_id)
    name = re.sub(r"^search \d+×", f"search {trials}×", run.info.run_name or "")
    if name != run.info.run_name:
        mlflow_client.update_run(parent_run_id, name=name)
    note = run.data.tags.get("mlflow.note.content", "")
    renamed = re.sub(r"^\*\*search \d+×(.*?)\*\*: \d+ runs", lambda m: f"**search {trials}×{m.group(1)}**: {trials} runs", note)
    if renamed != note:
        mlflow_client.set_tag(parent_run_id, "mlflow.note.content", renamed)


def _describe_best(mlflow_client, parent_run_id: str, best, metric: str) -> None:
    """The description's last line names the best trial so far and its values, replaced after every batch."""
    import re

    note = mlflow_client.get_run(parent_run_id).data.tags.get("mlflow.note.content", "")
    values = ", ".join(f"`{k}={v!r}`" for k, v in best.params.items())
    line = f"**Best trial so far**: {best.number}, {metric} {best.value:.6g}: {values}"
    note = re.sub(r"\n\n\*\*Best trial so far\*\*: [^\n]*", "", note) + f"\n\n{line}"
    mlflow_client.set_tag(parent_run_id, "mlflow.note.content", note[:5000])
