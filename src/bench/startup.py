"""The bench's start-up probe: process start to first training step of a fresh `python -m src.train`."""

import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from src.core.schema import PROJECT_ROOT

STARTUP_EXPERIMENT = "bench-startup"
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[\w+\] - (.*)$")


def _proc_start_wall_time(pid: int) -> Optional[float]:
    """Wall-clock start time of a process from /proc (10 ms resolution), None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the ")"
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        now = time.time()
        return now - (since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _PeakRss:
    """Peak RSS of a child process, polled from /proc/<pid>/status (VmHWM) until it exits."""

    # Not getrusage(RUSAGE_CHILDREN): it would report the parent's size, since the
    # forked child counts the parent's pages until it execs.

    def __init__(self, pid: int, interval: float = 0.05):
        self.mib: Optional[float] = None
        self._path = Path(f"/proc/{pid}/status")
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mib = int(line.split()[1]) / 1024.0
            except (OSError, ValueError, IndexError):
                return  # exited (or not Linux)
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _log_times(log_file: Path) -> List[tuple]:
    """(wall time, logger, message) of each line of a Hydra job log."""
    if not log_file.exists():
        return []
    out = []
    for line in log_file.read_text().splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, match.group(2), match.group(3)))
    return out


def epoch_seconds_key(run) -> str:
    """The name a run logged its epochs' wall time under: `system/epoch_seconds`, or `epoch_seconds` before that."""
    return next((key for key in ("system/epoch_seconds", "epoch_seconds") if key in run.data.metrics),
                "system/epoch_seconds")


def measure_startup(overrides: Sequence[str], tracking_uri: str, workdir: Path) -> Dict[str, Any]:
    """Process start to the first training step of a fresh `python -m src.train` (1 epoch)."""
    from mlflow import MlflowClient

    run_dir = workdir / "startup"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        *overrides,
        "train.epochs=1",
        f"mlflow.experiment_name={STARTUP_EXPERIMENT}",
        f"hydra.run.dir={run_dir}",
    ]
    before = time.time()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc_start = _proc_start_wall_time(proc.pid)
    peak = _PeakRss(proc.pid)
    stdout, stderr = proc.communicate()
    peak.stop()
    ended = time.time()
    if proc.returncode != 0:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"startup run failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(STARTUP_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    # No hook in the loops is needed: epoch 0's metrics are stamped right after the epoch,
    # so its first step began at that timestamp minus its epoch_seconds (to within the
    # millisecond resolution of MLflow timestamps and the moment before the log call).
    (point,) = client.get_metric_history(run.info.run_id, epoch_seconds_key(run))
    epoch_end = point.timestamp / 1000.0
    first_step = epoch_end - point.value
    # Every line of the job's log before the first step, with its time since start: a
    # log line added in src/train.py (e.g. after an import) shows up here as a phase.
    phases: Dict[str, float] = {"mlflow run start_time": run.info.start_time / 1000.0 - before}
    for stamp, logger, message in _log_times(run_dir / "train.log"):
        if stamp <= first_step + 0.001:
            phases[f"log {logger}: {message[:60]}"] = stamp - before
    return {
        "command": " ".join(cmd),
        "start_to_first_step_seconds": first_step - before,
        "start_to_first_epoch_end_seconds": epoch_end - before,
        "first_epoch_seconds": point.value,
        "process_wall_seconds": ended - before,
        "peak_rss_mib": peak.mib,
        "popen_to_process_start_seconds": None if proc_start is None else proc_start - before,
        "phases_since_start_seconds": phases,
        "method": "parent's clock just before Popen -> (epoch 0 metric timestamp - epoch 0 epoch_seconds)",
    }

