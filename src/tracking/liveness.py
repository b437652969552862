"""Which RUNNING runs are still alive: each run's process identity and heartbeat, and the reaper of dead ones.

A process killed with `kill -9` (or by the out-of-memory killer) cannot end its run; the
next command that touches the experiment sees that the run's process is gone (same host),
or that its heartbeat stopped (another host), and marks the run FAILED with a `dead` tag.

A process resuming a run claims it with a token naming the process (`claim_token`); a claim
whose process died before it took the run up is told apart by `claim_dead_reason`.
"""

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from src.core.runstates import FAILED, RUNNING

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, PROCESS_TAG, HEARTBEAT_TAG, DEAD_TAG = "host", "pid", "process_start", "heartbeat", "dead"
HEARTBEAT_SECONDS = 60  # how often a running job says it is alive
DEAD_AFTER_SECONDS = 600  # a run on another host whose heartbeat is this old is dead


def _process_start(pid: int) -> Optional[str]:
    """The boot and the start time (clock ticks since boot) of a process: unique for its life, unlike the PID."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has exited: only its parent has not collected it yet
        return None
    return f"{boot}:{fields[19]}"


def process_tags() -> Dict[str, str]:
    """This process's identity and a first heartbeat, as run tags."""
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PROCESS_TAG: _process_start(os.getpid()) or "unknown",
        HEARTBEAT_TAG: str(int(time.time())),
    }


class Heartbeat:
    """A daemon thread that sets the run's heartbeat tag every HEARTBEAT_SECONDS until stopped."""

    def __init__(self, mlflow_client, run_id: str):
        self._client, self._run_id = mlflow_client, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception:  # the metric writer reports store trouble; a missed beat is harmless
                pass

    def stop(self) -> None:
        self._stop.set()


def claim_token() -> str:
    """A claim on a run by this process: its identity, the time, and a nonce that no other claim shares."""
    return (f"host={socket.gethostname()} pid={os.getpid()} start={_process_start(os.getpid()) or 'unknown'} "
            f"at={time.time():.3f} id={uuid.uuid4().hex[:12]}")


def claim_owner(token: Optional[str]) -> str:
    """Who wrote a claim, for an error line: `process PID on HOST`."""
    fields = _claim_fields(token)
    return f"process {fields.get('pid', '?')} on {fields.get('host', '?')}" if fields else "no claim"


def claim_dead_reason(token: str, now: Optional[float] = None) -> Optional[str]:
    """Why the process that wrote a claim cannot be taking the run up (gone, this very process, or silent for
    DEAD_AFTER_SECONDS on another host), or None while it may be."""
    fields = _claim_fields(token)
    if fields.get("host") == socket.gethostname() and _process_start(os.getpid()) is not None:
        pid = int(fields.get("pid", "0"))
        if pid == os.getpid() and fields.get("start") == _process_start(pid):
            return "it is this process's own earlier claim, which did not take"  # claims here are one at a time
        started = _process_start(pid)
        if started is None or fields.get("start") not in ("unknown", started):
            return f"its process {pid} is gone"
        return None
    age = (now or time.time()) - float(fields.get("at", "0") or 0)
    # a claim is taken up (the run RUNNING) within seconds: one this old is a process that died in between
    return f"it is {age / 60:.0f} min old and was never taken up" if age > DEAD_AFTER_SECONDS else None


def _claim_fields(token: Optional[str]) -> Dict[str, str]:
    return dict(part.split("=", 1) for part in (token or "").split() if "=" in part)


def dead_reason(run, now: Optional[float] = None) -> Optional[str]:
    """Why a RUNNING run is dead, or None while it may be alive (or carries no identity to tell)."""
    tags = run.data.tags
    if run.info.status != RUNNING or PID_TAG not in tags:
        return None
    if tags.get(HOST_TAG) == socket.gethostname():
        if _process_start(os.getpid()) is None:  # no /proc to look in (not Linux, or hidden): cannot tell
            return None
        pid = int(tags[PID_TAG])
        started = _process_start(pid)
        if started is None or (tags.get(PROCESS_TAG) not in ("unknown", started)):
            return f"its process {pid} on {tags[HOST_TAG]} is gone"
        return None
    if HEARTBEAT_TAG not in tags:  # a sweep's parent: its jobs beat, not it
        return None
    beat = int(tags[HEARTBEAT_TAG])
    silent = (now or time.time()) - beat
    if silent > DEAD_AFTER_SECONDS:
        return f"no heartbeat from {tags.get(HOST_TAG)} for {silent / 60:.0f} min"
    return None


def reap_dead_runs(mlflow_client, experiment_id: str) -> List[str]:
    """Mark the experiment's dead RUNNING runs FAILED (tag `dead`); returns a line for each."""
    lines = []
    for run in mlflow_client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        reason = dead_reason(run)
        if reason is None:
            continue
        mlflow_client.set_tag(run.info.run_id, DEAD_TAG, reason)
        mlflow_client.set_terminated(run.info.run_id, FAILED)
        lines.append(f"run {run.info.run_id} ({run.info.run_name}) was RUNNING but {reason}: marked FAILED (dead)")
        log.warning(lines[-1])
    return lines
