"""Parallel jobs, each in a worker process of its own: a worker killed from outside fails its own job only, and an
interrupt of the sweep stops every worker before it returns.

Hydra's joblib launcher runs every job through one loky pool: when one worker dies (`kill -9`, the out-of-memory
killer), loky marks the whole pool broken, terminates the other workers mid-job and joblib raises
TerminatedWorkerError out of the sweep. Single-worker loky executors, one per job running at once, confine that to
its job: a broken one is replaced for the next job. A healthy one runs job after job (and batch after batch of a
search), so its worker keeps what a job pays once: the imports (~5 s) and the compiled graphs (src.training.reuse).
"""

import atexit
import os
import re
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any, Callable, Dict, List, Sequence, Tuple

from src.core.interrupts import signals_blocked

STOP_SECONDS = 60  # how long an interrupted job has to end its run KILLED (and write its checkpoint)
_idle: List[Any] = []  # single-worker executors whose last job ended well: the next jobs run in them
_watching = False  # in a worker: whether its orphan watch runs


def pool_size(n_jobs: Any) -> int:
    """joblib's n_jobs as a number of workers: -1 every core, -2 all but one, None one."""
    if n_jobs is None:
        return 1
    cores = len(os.sched_getaffinity(0))
    return max(1, cores + 1 + int(n_jobs)) if int(n_jobs) < 0 else int(n_jobs)


def run_in_own_workers(function: Callable, calls: Sequence[Tuple], n_jobs: int,
                       on_lost: Callable[[int, List[int], str], Any]) -> List[Any]:
    """function(*call) for every call, at most n_jobs at once, each in a worker process of its own (one an earlier
    job left, when it ended well); a call whose worker died gets on_lost(index, its worker's pids, how it died) as
    its result."""
    from joblib.externals.loky import ProcessPoolExecutor
    from joblib.externals.loky.process_executor import BrokenProcessPool

    results: List[Any] = [None] * len(calls)
    waiting = list(range(len(calls)))
    running: Dict[Any, Tuple[int, Any, List[int]]] = {}  # future: (call, its executor, its worker's pids)
    try:
        while waiting or running:
            while waiting and len(running) < n_jobs:
                index = waiting.pop(0)
                executor = _idle.pop(0) if _idle else ProcessPoolExecutor(max_workers=1)
                future = executor.submit(_watched, os.getpid(), function, *calls[index])
                running[future] = (index, executor, list(getattr(executor, "_processes", {})))
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                index, executor, pids = running.pop(future)
                try:
                    results[index] = future.result()
                except BrokenProcessPool as exc:  # its worker died mid-job: this job's failure, not the sweep's
                    results[index] = on_lost(index, pids, _how_it_died(exc))
                    executor.shutdown(wait=False, kill_workers=True)
                else:
                    _keep_idle(executor)
    except KeyboardInterrupt:
        with signals_blocked():  # a second Ctrl-C must not cut the stop short and orphan a worker
            _stop(running)
            _stop_idle()
        raise
    return results


def _keep_idle(executor) -> None:
    """Keep a worker for the next job; the first one kept makes the process stop them all when it exits."""
    if not _idle:
        atexit.register(_stop_idle)
    _idle.append(executor)


def _stop_idle() -> None:
    """End the workers waiting for a job (they hold nothing but their imports and graphs)."""
    while _idle:
        _idle.pop().shutdown(wait=False, kill_workers=True)


def _watched(sweep_pid: int, function: Callable, *args: Any) -> Any:
    """function(*args) in a worker that stops itself (SIGTERM: its run ends KILLED) if its sweep's process is killed
    (`kill -9`), which loky does not tell its workers: they would train on, orphaned."""

    global _watching

    def watch() -> None:
        while os.getppid() == sweep_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    if not _watching:  # once per worker: it runs job after job
        _watching = True
        threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
    return function(*args)


def _how_it_died(exc: BaseException) -> str:
    """The worker's end from loky's message, e.g. `SIGKILL(-9)`."""
    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(exc))
    return f"was ended by {codes.group(1)}" if codes else "died"


def _stop(running: Dict[Any, Tuple[int, Any, List[int]]]) -> None:
    """SIGTERM to every running job's worker, which ends its run KILLED; after STOP_SECONDS, SIGKILL."""
    pids = [pid for _, _, worker in running.values() for pid in worker]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait(list(running), timeout=STOP_SECONDS)
    for _, executor, _ in running.values():
        executor.shutdown(wait=False, kill_workers=True)  # a worker that did not stop in time
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_children(marker: str, seconds: float = STOP_SECONDS) -> None:
    """SIGTERM to this process's children whose command line holds `marker` (and their own children); SIGKILL to
    what is left after `seconds`."""
    import psutil

    children = [c for c in psutil.Process().children() if marker in " ".join(_cmdline(c))]
    for child in children:
        try:
            child.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=seconds)
    for child in alive:
        for process in [*child.children(recursive=True), child]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def _cmdline(process) -> List[str]:
    try:
        return process.cmdline()
    except Exception:  # gone, or a zombie
        return []
