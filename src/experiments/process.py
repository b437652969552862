"""The process-wide settings of a command, in one place: both `python -m src.train` and `main()` from code use it."""

import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from src.core import compat
from src.core.errors import composition_error_line
from src.core.interrupts import handle_interrupts
from src.core.redaction import RedactedStream
from src.experiments.search import register_sweeper

_prepared = False


def prepare_process() -> None:
    """Secrets masked on stdout and stderr, Ctrl-C and SIGTERM handled, Hydra's errors in one line, the sweeper
    registered; once per process (Hydra's error printer must not be wrapped twice)."""
    global _prepared
    if _prepared:
        return
    _prepared = True
    sys.stdout, sys.stderr = RedactedStream(sys.stdout), RedactedStream(sys.stderr)
    handle_interrupts()  # SIGTERM ends a sweep like Ctrl-C: its parent KILLED, the summary printed, workers stopped
    compat.one_line_config_errors(composition_error_line)
    # conf/hydra/launcher/*.yaml replace the plugins' own options on purpose (see them)
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/(ray|submitit_slurm|submitit_local|joblib)' is "
                                              "validated against ConfigStore schema")
    register_sweeper()


@contextmanager
def exit_130_on_interrupt() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) ends the command with exit status 130 and one line: its runs are marked KILLED already."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
