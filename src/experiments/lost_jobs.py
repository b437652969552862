"""A job whose worker process was killed from outside (`kill -9`, the out-of-memory killer): its run and its
result ended FAILED with the reason, so the sweep's summary names it and nothing is left RUNNING."""

import json
from pathlib import Path
from typing import Optional, Sequence

from src.core.errors import JobFailed
from src.core.interrupts import signals_blocked
from src.core.runstates import FAILED, RUNNING
from src.experiments.sweep import JOB_RESULT_FILE, JobResult
from src.tracking.liveness import DEAD_TAG
from src.tracking.store import PARENT_TAG, client


def fail_lost_job(job: int, output_dir: Path, pids: Sequence[int], how: str, tracking_uri: str,
                  parent_run_id: Optional[str]) -> JobFailed:
    """End the lost job's run FAILED (found by its sweep and its worker's pid) and its job_result.json; returns the
    one-line error the launcher hands back as the job's failure."""
    path = output_dir / JOB_RESULT_FILE
    result = JobResult(**json.loads(path.read_text())) if path.exists() else \
        JobResult(job=job, run_name="", parent_run_id=parent_run_id)
    pids = [result.pid] if result.pid else list(pids)  # the job's own word for it, where it got to say it
    run_id = result.run_id or _running_run_of(tracking_uri, parent_run_id, pids)
    worker = f"its worker process {', '.join(map(str, pids)) or '?'}"
    error = (f"job {job}: {worker} {how} (killed from outside: the out-of-memory killer, or kill -9?); "
             "the other jobs go on")
    if run_id is not None:
        with signals_blocked():
            mlflow_client = client(tracking_uri)
            if mlflow_client.get_run(run_id).info.status == RUNNING:
                mlflow_client.set_tag(run_id, "error", error)
                mlflow_client.set_tag(run_id, DEAD_TAG, f"{worker} {how}")
                mlflow_client.set_terminated(run_id, FAILED)
    result.status, result.run_id, result.error = FAILED, run_id, error
    output_dir.mkdir(parents=True, exist_ok=True)
    result.write(output_dir)
    return JobFailed(error, run_id=run_id)


def _running_run_of(tracking_uri: str, parent_run_id: Optional[str], pids: Sequence[int]) -> Optional[str]:
    """The RUNNING child of the sweep that the dead worker was training (its `pid` tag)."""
    if parent_run_id is None or not pids:
        return None
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    wanted = " or ".join(f"tags.pid = '{pid}'" for pid in pids[:1])  # one worker per job
    runs = mlflow_client.search_runs([experiment], filter_string=(
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING' and {wanted}"))
    return runs[0].info.run_id if runs else None
