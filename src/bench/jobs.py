"""The bench's multirun probes: a whole sweep, a seed sweep and an Optuna search, each in a fresh process, timed
as a whole and job by job from their runs' records."""

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from src.bench.startup import epoch_seconds_key
from src.core.schema import PROJECT_ROOT

SWEEP_AXES = ("reg=none,l2", "loop=fit,tape")  # the README's sweep: 4 runs, 4 graphs
SEARCH_AXES = ("hydra/sweeper=optuna", "reg=l2", "reg.l2=tag(log, interval(1e-5, 1e-2))")  # `make search`
METHOD = ("wall: the parent's clock around the whole `python -m src.train -m ...`; per job, from its MLflow run: "
          "fixed = the gap since the previous run ended (Hydra's job set-up, data, model; the first job: the "
          "process's start-up and the parent run) + its run's start to its first epoch + its first epoch beyond a "
          "steady one (tracing) + its last epoch to its run's end (models, figures)")


def measure_multirun(name: str, axes: Sequence[str], overrides: Sequence[str], tracking_uri: str, workdir: Path,
                     epochs: int) -> Dict[str, Any]:
    """Wall time of `python -m src.train -m <axes>` in a fresh process, and each job's fixed cost."""
    from mlflow import MlflowClient

    from src.tracking.store import PARENT_TAG

    experiment_name = f"bench-{name}"
    cmd = [sys.executable, "-m", "src.train", "-m", *axes, *overrides, f"train.epochs={epochs}",
           f"mlflow.experiment_name={experiment_name}", f"hydra.sweep.dir={workdir / name}"]
    before = time.time()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.time() - before
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.sweep = 'true'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    jobs = job_breakdown(client, children, before)
    later = sorted(job["fixed_seconds"] for job in jobs[1:])
    return {
        "command": " ".join(cmd),
        "epochs": epochs,
        "wall_seconds": wall,
        "sum_epoch_seconds": sum(job["sum_epoch_seconds"] for job in jobs),
        "sum_steady_epoch_seconds": sum(job["steady_epoch_seconds"] * job["epochs"] for job in jobs),
        "between_epochs_seconds": sum(job["between_epochs_seconds"] for job in jobs),
        "after_last_run_seconds": before + wall - (jobs[-1]["run_end"] if jobs else before),  # summary, exit
        "jobs": jobs,
        "median_job_fixed_seconds": later[len(later) // 2] if later else None,  # the jobs after the first
        "method": METHOD,
    }


def job_breakdown(client, children: List, before: float) -> List[Dict[str, Any]]:
    """Each child run's epochs and its fixed cost, split by where it went (MLflow's start/end times, each epoch's
    seconds and the timestamp it was logged at, as it ended)."""
    jobs, previous_end = [], before
    for child in children:
        points = sorted(client.get_metric_history(child.info.run_id, epoch_seconds_key(child)), key=lambda p: p.step)
        seconds = [p.value for p in points]
        ends = [p.timestamp / 1000.0 for p in points]
        starts = [end - value for end, value in zip(ends, seconds)]
        run_start, run_end = child.info.start_time / 1000.0, child.info.end_time / 1000.0
        steady = sorted(seconds[1:])[len(seconds[1:]) // 2] if len(seconds) > 1 else (seconds[0] if seconds else 0.0)
        job = {
            "run_name": child.info.run_name,
            "status": child.info.status,
            "epochs": len(seconds),
            "sum_epoch_seconds": sum(seconds),
            "steady_epoch_seconds": steady,
            "before_run_seconds": run_start - previous_end,  # the first job: the process's start-up
            "run_to_first_epoch_seconds": starts[0] - run_start if points else 0.0,
            "first_epoch_extra_seconds": seconds[0] - steady if points else 0.0,  # tracing
            "between_epochs_seconds": sum(b - a for a, b in zip(ends, starts[1:])),  # callbacks, checkpoints
            "after_last_epoch_seconds": run_end - ends[-1] if points else 0.0,  # models, figures
            "run_end": run_end,
        }
        job["fixed_seconds"] = (job["before_run_seconds"] + job["run_to_first_epoch_seconds"]
                                + job["first_epoch_extra_seconds"] + job["after_last_epoch_seconds"])
        jobs.append(job)
        previous_end = run_end
    return jobs
