"""The run's clock: seconds the run ran, with the time it was paused by job control left out.

Every duration the runner reports (phase times, a step's ``step_time_s``, SAFE's probe time, a
pruning job's scoring time and latency) is read from :func:`now`: ``time.perf_counter()`` less
the seconds spent paused so far. A run is paused with **SIGTSTP** (Ctrl-Z in its terminal, or
``kill -TSTP <pid>``) and continued with SIGCONT (``fg``, ``kill -CONT <pid>``): while
:func:`counting_pauses` is installed (``StopSignals.installed`` does it for every run), the
handler stops the process itself and, once continued, adds the pause to :func:`paused_s`, so a
benchmark paused for an hour still reports its own training time. A ``runner.sweep`` passes
both signals on to its running jobs (each job is a session of its own, out of the terminal's
reach); a job under ``accelerate launch``/torchrun is paused as a group (``kill -TSTP -- -<pid>``).

The handler runs in the main thread between bytecodes, so a SIGTSTP that lands during a long
C call (a device sync, a checkpoint write, a collective) stops the process when that call
returns; if SIGCONT came in between, the pause is already over and the process does not stop.

A **SIGSTOP** from outside (``kill -STOP``, a scheduler's suspend) cannot be caught: that time is
counted as if the run had worked through it. Pause with SIGTSTP, or stop with SIGTERM and resume
from the checkpoint (``resume=true``; the checkpoint carries the time, see ``runner.train_state``).
On a GPU, kernels already queued keep running while the process is stopped; that time is left
out too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

_state = {"paused": 0.0, "pausing": False, "wakeup": None, "on_pause": None, "on_continue": None}


def paused_s() -> float:
    """Seconds this process has spent paused by SIGTSTP (under :func:`counting_pauses`) so far."""
    return _state["paused"]


def now() -> float:
    """``time.perf_counter()`` less the pauses so far: differences of it are the seconds that ran."""
    while True:  # a pause counted between the two reads would make a duration short by it: read again
        paused = _state["paused"]
        reading = time.perf_counter()
        if _state["paused"] == paused:
            return reading - paused


def _continued_already() -> bool:
    """Whether a SIGCONT came after the last SIGTSTP: the C-level handlers write each signal's number to the
    wakeup pipe as it arrives, while this handler may run only when the main thread leaves a C call."""
    if _state["wakeup"] is None:
        return False
    arrived = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(_state["wakeup"], 4096):
            arrived += chunk
    last_stop = arrived.rfind(bytes([signal.SIGTSTP]))
    return last_stop >= 0 and bytes([signal.SIGCONT]) in arrived[last_stop + 1:]


def _pause(signum, frame) -> None:
    """SIGTSTP: stop this process now (SIGSTOP: even in an orphaned process group, where the default stop of
    SIGTSTP is discarded), and once continued count how long it stood still."""
    if _state["pausing"] or _continued_already():  # a second SIGTSTP while pausing; a pause already over
        return
    _state["pausing"] = True
    start = time.perf_counter()
    try:
        log.warning("SIGTSTP: pausing; the time until SIGCONT is not counted in the run's times")
        if _state["on_pause"]:
            _state["on_pause"]()
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once SIGCONT has continued the process
    finally:
        seconds = time.perf_counter() - start
        _state["paused"] += seconds
        _state["pausing"] = False
    if _state["on_continue"]:
        _state["on_continue"]()
    log.warning("continued after %.1f s paused (left out of the run's times)", seconds)


@contextlib.contextmanager
def counting_pauses(on_pause=None, on_continue=None):
    """Handle SIGTSTP while the block runs (main thread, POSIX only), then restore what was there before.
    ``on_pause`` runs before the process stops, ``on_continue`` after it continues (a sweep passes the signals
    on to its jobs)."""
    if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    saved = dict(_state)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = {signal.SIGTSTP: signal.signal(signal.SIGTSTP, _pause),
                signal.SIGCONT: signal.signal(signal.SIGCONT, lambda signum, frame: None)}  # only to reach the pipe
    _state.update(wakeup=read_end, on_pause=on_pause, on_continue=on_continue)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        _state.update(wakeup=saved["wakeup"], on_pause=saved["on_pause"], on_continue=saved["on_continue"])
        os.close(read_end)
        os.close(write_end)
