"""Ctrl-C, SIGTERM and SIGHUP: a KeyboardInterrupt now, remembered until the run stops, and held while runs are closed.

Python raises a signal's exception wherever the main thread happens to be; where that is code
that swallows exceptions (a finalizer, a callback from TensorFlow's C++), the interrupt would
be lost and training would go on. The flag makes the next epoch end raise it again.

In a job submitit started (SLURM, submitit_local), its preemption and timeout signal (USR2) is an
interrupt too: submitit's own handler would exit mid-epoch, leaving the run FAILED without its last
checkpoint (or RUNNING, if it lands while the run is being closed). The run ends KILLED with its
checkpoint first; then `requeue_if_preempted` hands the signal to submitit, which requeues the job.
"""

import os
import signal
import threading
from contextlib import contextmanager
from typing import Dict, Iterator

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each ends the runs of this process KILLED
_requested = threading.Event()
_requeue = threading.Event()  # submitit's preemption or timeout signal came: requeue once the run has ended
_submitit: Dict = {}  # in a submitit job: its preemption signal and submitit's handler for it


def _interrupt(signum, frame) -> None:
    if signum == _submitit.get("signal"):
        _requeue.set()
        if _requested.is_set():  # an interrupt under way (SLURM's SIGTERM came first): it only adds the requeue
            return
    _requested.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def handle_interrupts() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in this process (SIGINT and SIGHUP stay ignored if they
    were); so does a submitit job's preemption signal."""
    # SIGINT or SIGHUP (a closed terminal, a dropped ssh connection) that was ignored (`nohup`) stays ignored
    for signum in INTERRUPTS:
        if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    if os.environ.get("SUBMITIT_EXECUTOR"):  # submitit set its handler before running the job; the rule is its own
        preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        handler = signal.getsignal(preempt) if preempt else None
        if callable(handler) and handler is not _interrupt:
            _submitit.update(signal=preempt, handler=handler)
            signal.signal(preempt, _interrupt)


def requeue_if_preempted() -> None:
    """If submitit's preemption or timeout signal came, submitit's handler now that the run has ended: it requeues
    the job (the same overrides) and exits, or raises once the job has timed out too often."""
    if not _requeue.is_set():
        return
    for s in (signal.SIGINT, signal.SIGTERM, _submitit["signal"]):
        signal.signal(s, signal.SIG_IGN)  # SLURM stops a job it requeues with SIGTERM: not a reason to stop this exit
    _submitit["handler"](_submitit["signal"], None)


def raise_if_interrupted(epoch: int = -1, metrics: Dict[str, float] = None) -> None:
    """Raise KeyboardInterrupt if a signal came and its first raise was swallowed (an epoch callback)."""
    if _requested.is_set():
        raise KeyboardInterrupt("interrupted")


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (and submitit's preemption signal) until the block is done, then raise the interrupt
    (main thread only).

    A signal mask would not do: the kernel hands the signal to any thread that does not
    block it (the metric writer, TensorFlow's pools) and Python raises it in the main one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    signals = (*INTERRUPTS, *([_submitit["signal"]] if _submitit else []))
    previous = {s: signal.getsignal(s) for s in signals}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in held:  # the first interrupt raises; a preemption signal during one only asks for the requeue
            _interrupt(signum, None)
