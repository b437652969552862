"""Ctrl-C and SIGTERM: a KeyboardInterrupt now, remembered until the run stops, and held while runs are closed.

Python raises a signal's exception wherever the main thread happens to be; where that is code
that swallows exceptions (a finalizer, a callback from TensorFlow's C++), the interrupt would
be lost and training would go on. The flag makes the next epoch end raise it again.
"""

import signal
import threading
from contextlib import contextmanager
from typing import Dict, Iterator

_requested = threading.Event()


def _interrupt(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def handle_interrupts() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in this process (SIGINT stays ignored if it was)."""
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)


def raise_if_interrupted(epoch: int = -1, metrics: Dict[str, float] = None) -> None:
    """Raise KeyboardInterrupt if a signal came and its first raise was swallowed (an epoch callback)."""
    if _requested.is_set():
        raise KeyboardInterrupt("interrupted")


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then raise the interrupt (main thread only).

    A signal mask would not do: the kernel hands the signal to any thread that does not
    block it (the metric writer, TensorFlow's pools) and Python raises it in the main one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            _requested.set()
            raise KeyboardInterrupt(signal.Signals(held[0]).name)
