"""Resume claims: how one process, and only one, takes over a stopped run to resume it."""

import itertools
import logging
from typing import Dict, Optional

from src.core.errors import TrackingError
from src.core.runstates import FAILED, KILLED, RUNNING
from src.tracking.liveness import claim_dead_reason, claim_owner, claim_token, process_tags

log = logging.getLogger(__name__)


RESUME_CLAIM_TAG = "resume_claim"  # the claim of the process that holds the run now; none on a run never resumed


# The n-th resume of a run is claimed by a param: the store keeps the first value a param is logged with and
# refuses any other (a unique key in its database), so of processes that claim the same resume, one wins
CLAIM_PARAM = "resume.claim.{}"


class RunTakenOver(TrackingError):
    """Another process has claimed the run this one is training: this one stops, writing nothing more to it."""


def claim_run(mlflow_client, run_id: str, tags: Dict[str, str]) -> str:
    """Take over a stopped run to resume it: claim its next resume (CLAIM_PARAM: one process wins it), then mark
    it RUNNING with this process's identity. Returns the claim; TrackingError if another process holds the run."""
    from mlflow.entities import RunTag

    # The resume count first, then the status: the count is raised once the run is RUNNING, so a count read
    # before a stopped status belongs to a resume that has ended (in one read the two may be seen out of order)
    resumes = int(mlflow_client.get_run(run_id).data.tags.get("resumed", "0"))
    run = mlflow_client.get_run(run_id)
    if run.info.status == RUNNING:
        raise TrackingError(f"run {run_id} is RUNNING in process {run.data.tags.get('pid', '?')} on "
                            f"{run.data.tags.get('host', '?')}: another process is training or resuming it")
    if run.info.status not in (KILLED, FAILED):
        raise TrackingError(f"run {run_id} is {run.info.status}: another process resumed it to its end meanwhile")
    claim = claim_token()
    for attempt in itertools.count(1):
        # a later attempt only past a claim whose process died before it took the run up
        key = CLAIM_PARAM.format(resumes + 1) + (f".{attempt}" if attempt > 1 else "")
        holder = _write_once(mlflow_client, run_id, key, claim)
        if holder == claim:
            break
        dead = claim_dead_reason(holder)
        if dead is None:
            raise TrackingError(f"run {run_id} is being resumed by another process ({claim_owner(holder)})")
        log.warning("resume: run %s's claim %s by %s is void (%s)", run_id, key, claim_owner(holder), dead)
    if attempt > 1 and mlflow_client.get_run(run_id).data.tags.get("resumed", "0") != str(resumes):
        raise TrackingError(f"run {run_id} is being resumed by another process (it was resumed meanwhile)")
    # the identity before RUNNING: a RUNNING run is judged alive or dead by it (src/tracking/liveness.py)
    identity = {k: v for k, v in tags.items() if k in (*process_tags(), "mlflow.source.git.commit")}
    mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**identity, RESUME_CLAIM_TAG: claim}.items()])
    mlflow_client.update_run(run_id, status=RUNNING)
    mlflow_client.set_tag(run_id, "resumed", str(resumes + 1))  # after RUNNING (see above)
    if "error" in run.data.tags:  # it said why it stopped; it goes on now
        mlflow_client.delete_tag(run_id, "error")
    return claim


def _write_once(mlflow_client, run_id: str, key: str, value: str) -> Optional[str]:
    """Log a param unless the run has it; the value it holds now (`value` if this call set it)."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.log_param(run_id, key, value)
        refused = None
    except MlflowException as exc:  # INVALID_PARAMETER_VALUE: it holds another value (else the read says why)
        refused = exc
    # read back even when taken: a folder store (no database) checks, then writes, and two writers both pass
    held = mlflow_client.get_run(run_id).data.params.get(key)
    if held is None:
        raise refused or TrackingError(f"run {run_id}: the store dropped the param {key}")
    return held
