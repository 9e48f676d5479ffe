"""The run's clock: seconds the run ran, with the time it was paused by job control left out.

Every duration the runner reports (phase times, a step's ``step_time_s``, SAFE's probe time, a
pruning job's scoring time and latency) is read from :func:`now`: ``time.perf_counter()`` less
the seconds spent paused so far. A run is paused with **SIGTSTP** (Ctrl-Z in its terminal, or
``kill -TSTP <pid>``) and continued with SIGCONT (``fg``, ``kill -CONT``): while
:func:`counting_pauses` is installed (``StopSignals.installed`` does it for every run), the
handler stops the process itself and, once continued, adds the pause to :func:`paused_s`, so a
benchmark paused for an hour still reports its own training time.

A **SIGSTOP** from outside (``kill -STOP``, a scheduler's suspend) cannot be caught: that time is
counted as if the run had worked through it. Pause with SIGTSTP, or stop with SIGTERM and resume
from the checkpoint (``resume=true``; the checkpoint carries the time, see ``runner.train_state``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

_paused = {"seconds": 0.0, "pauses": 0}  # this process's pauses so far (a run reads differences)


def paused_s() -> float:
    """Seconds this process has spent paused by SIGTSTP (under :func:`counting_pauses`) so far."""
    return _paused["seconds"]


def now() -> float:
    """``time.perf_counter()`` less the pauses so far: differences of it are the seconds that ran."""
    return time.perf_counter() - _paused["seconds"]


def _pause(signum, frame) -> None:
    """SIGTSTP: stop this process now (SIGSTOP: even in an orphaned process group, where the
    default stop of SIGTSTP is discarded), and once continued count how long it stood still."""
    start = time.perf_counter()
    log.warning("SIGTSTP: pausing; the time until SIGCONT is not counted in the run's times")
    os.kill(os.getpid(), signal.SIGSTOP)  # returns once SIGCONT has continued the process
    seconds = time.perf_counter() - start
    _paused["seconds"] += seconds
    _paused["pauses"] += 1
    log.warning("continued after %.1f s paused (left out of the run's times)", seconds)


@contextlib.contextmanager
def counting_pauses():
    """Handle SIGTSTP while the block runs (main thread, POSIX only), then restore the previous handler."""
    if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTSTP, _pause)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, previous)
