"""Where `resume=true` picks a run up: the newest stopped run of the same config and its newest whole checkpoint."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from src.core.errors import TrackingError, first_line
from src.tracking.store import client, resumable_run
from src.training.checkpoints import ARTIFACT_DIR, META_FILE, SLOTS, STATE_FILE, Snapshot, read_meta

log = logging.getLogger(__name__)


@dataclass
class ResumePoint:
    """Where `resume=true` picks up: the stopped run, its checkpoint, and the first epoch left to train."""

    run: object  # the MLflow run
    snapshot: Snapshot
    first_epoch: int
    slot: str  # the slot it came from; the next checkpoint goes to the other one


def resume_point(tracking_uri: str, experiment_name: str, digest: str, epochs: int, staging: Path) -> Optional[ResumePoint]:
    """The newest stopped run with this config digest that has a checkpoint, its newest whole slot downloaded
    into `staging`; None if there is none (then the run starts afresh)."""
    run = resumable_run(tracking_uri, experiment_name, digest, ARTIFACT_DIR)
    if run is None:
        return None
    run_id, mlflow_client = run.info.run_id, client(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file is noise in a job's log
    try:
        present = {Path(a.path).name for a in mlflow_client.list_artifacts(run_id, ARTIFACT_DIR)}
        candidates, problems = [], []
        for slot in SLOTS:
            if slot not in present:
                continue
            folder = staging / "resumed-from" / slot
            folder.mkdir(parents=True, exist_ok=True)
            try:
                path = mlflow_client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{slot}/{META_FILE}", str(folder))
                candidates.append((read_meta(Path(path))["epoch"], slot, folder))
            except Exception as exc:  # a missing or half-written state.json: that slot is out
                problems.append(f"{slot}: {first_line(exc)}")
        for epoch, slot, folder in sorted(candidates, reverse=True):  # the newest whole slot wins
            try:
                mlflow_client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{slot}/{STATE_FILE}", str(folder))
                snapshot = Snapshot.load(folder)
            except Exception as exc:  # MLflow's, OSError, DamagedCheckpoint
                problems.append(f"{slot}: {first_line(exc)}")
                continue
            if problems:
                log.warning("resume: run %s's checkpoint slot %s is damaged; resuming from slot %s (after epoch %d)",
                            run_id, "; ".join(problems), slot, epoch)
            # a run that had stopped early (early stopping) and was killed before it ended trains no further
            first_epoch = epochs if snapshot.monitor["stopped_epoch"] is not None else snapshot.epoch + 1
            return ResumePoint(run, snapshot, first_epoch, slot)
    except Exception as exc:  # the store itself failing
        raise TrackingError(f"resume: run {run_id}'s checkpoint cannot be read ({first_line(exc)})") from None
    # killed during its first upload: nothing to continue from, so a new run starts (this one stays FAILED)
    log.warning("resume: run %s has no whole checkpoint (%s); starting a new run", run_id,
                "; ".join(problems) or "no slot")
    return None
