"""The background metric writer: epochs written in order, transient store trouble waited out, none lost."""

import json
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

from src.core.errors import TrackingError
from src.core.redaction import redact

log = logging.getLogger(__name__)

# Store errors no retry can cure; anything else (a lock, a server restarting) is retried.
PERMANENT = (
    "readonly database",
    "disk is full",
    "no space left",
    "no such table",
    "unable to open database",
    "disk i/o error",
    "file is not a database",
    "permission denied",
    "403",
    "401",
)
UNWRITTEN_FILE = "unwritten_metrics.jsonl"


def store_error_line(exc: BaseException) -> str:
    """The line of a store error that says what went wrong (SQLAlchemy wraps it in lines of context)."""
    context = ("(raised as a result of", "[SQL", "[parameters", "(Background on this error")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith(context)]
    refused = re.search(r"\[Errno -?\d+\] [^'\")]+", lines[0]) if lines and "API request to" in lines[0] else None
    if refused:  # MLflow's REST client wraps the socket error in three layers of context
        return f"no answer from the server: {refused.group(0)}"
    return redact(re.sub(r"^\((sqlite3|psycopg2)\.\w+\) ", "", lines[0]) if lines else type(exc).__name__)


def store_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the store no longer answers: a refused or dropped connection,
    or MLflow's REST client giving up on a request after its retries."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.ConnectionError,
                            requests.exceptions.Timeout)):
            return True
        if type(exc).__name__ == "MlflowException" and re.search(r"API request to \S+ failed with exception", str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class StoreWriteError(TrackingError):
    """The store stopped taking a run's metrics; what it did not take is in a local file."""


class MetricWriter:
    """Writes each epoch's metrics on one background thread, so an epoch's write overlaps the next epoch.

    A failed write is retried with backoff for up to `retry_seconds` (the epochs behind it
    wait, in order). Past that, or on an error no retry can cure, the store is `broken`:
    this epoch and every later one go to `<spill_dir>/unwritten_metrics.jsonl` instead.
    """

    def __init__(self, mlflow_client, run_id: str, tracking_uri: str, retry_seconds: float, spill_dir: Path):
        self._client, self._run_id, self._uri = mlflow_client, run_id, tracking_uri
        self._retry_seconds = retry_seconds
        self.spill_file = spill_dir / UNWRITTEN_FILE
        self.broken: Optional[str] = None  # why the store stopped taking writes (one line)
        self.first_unwritten: Optional[int] = None
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-writer")
        self._pending: List[Future] = []
        self._spill_lock = threading.Lock()  # the training thread and the writer may both spill
        # MLflow logs every failed SQL write with a traceback, urllib3 every HTTP retry; the writer
        # says it in one line instead.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

    def submit(self, epoch: int, metrics: Dict[str, float]) -> None:
        """Queue one epoch's metrics; raises StoreWriteError once the store has stopped taking them."""
        if self.broken:
            self._spill(epoch, metrics)
            raise self.error()
        self._pending.append(self._executor.submit(self._write, epoch, metrics))

    def flush(self) -> None:
        """Wait until every queued epoch is written (or spilled); raises StoreWriteError if any was spilled."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        if self.broken:
            raise self.error()

    def abandon(self) -> None:
        """Stop retrying (Ctrl-C, SIGTERM, a failed run); queued epochs are written if the store takes them, else spilled."""
        self._stop.set()
        self._executor.shutdown(wait=True)

    def error(self) -> StoreWriteError:
        return StoreWriteError(
            f"mlflow.tracking_uri={redact(self._uri)}: the store stopped taking writes ({self.broken}); "
            f"run {self._run_id} stopped, its metrics from epoch {self.first_unwritten} on are kept in {self.spill_file}"
        )

    def _write(self, epoch: int, metrics: Dict[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, epoch) for key, value in metrics.items()]
        delay, deadline, warned = 0.5, None, False
        while not self.broken:
            try:
                self._client.log_batch(self._run_id, metrics=batch)
                if warned:
                    log.warning("store %s takes writes again; epoch %d written", redact(self._uri), epoch)
                return
            except Exception as exc:
                reason = store_error_line(exc)[:300]
                deadline = deadline or time.monotonic() + self._retry_seconds
                permanent = any(p in reason.lower() for p in PERMANENT)  # not in SQLAlchemy's parameters
                if permanent or time.monotonic() >= deadline or self._stop.is_set():
                    self.broken = reason
                    break
                if not warned:
                    log.warning("store %s did not take epoch %d (%s); retrying for up to %g s",
                                redact(self._uri), epoch, reason, self._retry_seconds)
                    warned = True
                self._stop.wait(delay)
                delay = min(2 * delay, 8.0)
        self._spill(epoch, metrics)

    def _spill(self, epoch: int, metrics: Dict[str, float]) -> None:
        """Keep an epoch the store did not take, one JSON line each."""
        with self._spill_lock:
            if self.first_unwritten is None or epoch < self.first_unwritten:
                self.first_unwritten = epoch
            self.spill_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spill_file, "a") as out:
                out.write(json.dumps({"run_id": self._run_id, "step": epoch, "metrics": metrics}) + "\n")
