"""Which runs a comparison holds: a sweep's finished children, the latest sweeps, or runs by ID; their histories."""

import sys
from typing import Optional, Sequence, Tuple

from src.analysis.report import History, RunData
from src.core.errors import UserError
from src.core.metrics import HEADLINE_METRIC, LEGACY_TASK, data_loss
from src.core.runstates import FINISHED
from src.tracking import store
from src.tracking.liveness import dead_reason


class CompareError(UserError):
    """Runs or sweeps that cannot be compared."""


def compared_metrics(task: str) -> Tuple[str, ...]:
    """The histories the figures and the table need: the losses, the data loss and the headline metric, with their
    `val_` twins (epoch_seconds and reg_loss are not plotted)."""
    return ("loss", "val_loss", *(m for metric in (data_loss(task), HEADLINE_METRIC[task]) for m in (metric, f"val_{metric}")))


def run_task(run) -> str:
    """The run's task: its `task` param, or the tutorial's for a run logged before tasks existed."""
    return run.data.params.get("task", LEGACY_TASK)


def latest_sweeps(client, experiment_name: str, tracking_uri: str, count: int = 1) -> list:
    """The `count` most recently started runs tagged sweep=true in the experiment, oldest first."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise CompareError(f"--experiment {experiment_name}: no such experiment in {store.redact(tracking_uri)}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=store.SWEEP_FILTER,
        order_by=["attributes.start_time DESC"],
        max_results=count,
    )
    if not runs:
        raise CompareError(f"--experiment {experiment_name}: no sweep yet; run one (make sweep) or pass run IDs")
    if len(runs) < count:
        raise CompareError(f"--latest {count}: --experiment {experiment_name} has only {len(runs)} sweeps")
    return runs[::-1]


def select_runs(
    client, tracking_uri: str, run_ids: Sequence[str], experiment_name: str, latest: int = 1
) -> Tuple[list, list, Optional[object]]:
    """The runs to compare, the sweeps among them, and the sweep to log on (when it is all that is compared)."""
    if not run_ids:
        given = latest_sweeps(client, experiment_name, tracking_uri, latest)
    else:
        given = [store.get_run(client, run_id, tracking_uri) for run_id in dict.fromkeys(run_ids)]
    parents = [r for r in given if store.is_sweep_parent(r)]
    runs = []
    for run in given:
        if not store.is_sweep_parent(run):
            runs.append(run)
            continue
        children = store.sweep_children(client, run)
        finished = [c for c in children if c.info.status == FINISHED]
        for child in children:
            if child.info.status != FINISHED:
                dead = dead_reason(child)
                print(f"note: skipped {child.info.run_name} {child.info.run_id} of sweep {run.info.run_id}: "
                      f"{child.info.status}" + (f", and dead: {dead}" if dead else ""), file=sys.stderr)
        if not finished:
            raise CompareError(f"sweep {run.info.run_id}: no FINISHED child runs to compare")
        runs.extend(finished)
    runs = list({r.info.run_id: r for r in runs}.values())  # a run named and also in a named sweep
    return runs, parents, parents[0] if len(given) == 1 and len(parents) == 1 else None


def load_run(client, run) -> RunData:
    """A run's params and per-epoch histories of its task's compared metrics (a step logged twice keeps its last)."""
    task = run_task(run)
    by_step = store.metric_histories(client, run, compared_metrics(task))
    history: History = {key: [steps[s] for s in sorted(steps)] for key, steps in by_step.items()}
    if not history[f"val_{data_loss(task)}"]:
        raise CompareError(
            f"run {run.info.run_id}: no val_{data_loss(task)} history (not a training run of this project?)"
        )
    name = run.info.run_name or run.info.run_id
    if run.info.status != FINISHED:  # a run named by ID may still be training, or have stopped: the table says so
        name += f" ({run.info.status})"
    return RunData(run.info.run_id, name, dict(run.data.params), history)


def common_task(runs: Sequence[RunData]) -> str:
    """The task every compared run has; CompareError naming them when they differ (their numbers are not alike)."""
    tasks = {run.params.get("task", LEGACY_TASK) for run in runs}
    if len(tasks) > 1:
        named = ", ".join(f"{r.name} ({r.params.get('task', LEGACY_TASK)})" for r in runs)
        raise CompareError(f"runs of different tasks cannot share one table: {named}")
    return tasks.pop()
