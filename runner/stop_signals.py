"""SIGINT/SIGTERM over a whole run: stop cleanly, and say truthfully what a resume continues from.

A run moves through stages, and a signal means something different in each:

=============  ===========================================================
``setup``      nothing trained yet: stop at once (tokenisation included);
               the record says nothing can be resumed, rerun the command.
``train``      finish the current optimizer step, save a checkpoint, stop.
``finish``     (final evaluation, model save, results) finish the current
               part, save a checkpoint at the final step, stop: a resume
               only evaluates and saves.
``post_train`` (head pruning after training) the training record is
               complete and kept: stop at once; ``resume=auto`` (or
               ``true``) prunes the saved model again in place, without
               retraining; ``prune.from_run`` prunes it into another dir.
``pruning``    (a ``prune.from_run`` job) stop at once, record
               ``interrupted``; ``resume=auto`` (or ``true``) reruns the
               pruning in place (it has no checkpoint: it starts over).
=============  ===========================================================

A second signal stops at once in every stage (``KeyboardInterrupt``); the
record then names the last complete checkpoint, which is what a resume
continues from. Exit code 128 + the signal's number (130 SIGINT, 143 SIGTERM).

SIGTSTP (Ctrl-Z) is no stop: it pauses the run until SIGCONT, and the pause is left out of the run's times
(``runner.run_clock``, installed with the rest by :meth:`StopSignals.installed`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from runner import run_clock

log = logging.getLogger(__name__)

SETUP, TRAIN, FINISH, POST_TRAIN, PRUNING = "setup", "train", "finish", "post_train", "pruning"
DEFERRED = (TRAIN, FINISH)  # stages that stop at a safe point, after saving a checkpoint


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped the run at ``step``; ``checkpoint_step`` is what ``resume=true`` continues from."""

    def __init__(self, signum: int, step: int, checkpoint_step: int | None = None, stage: str = TRAIN, run_dir=None):
        name = signal.Signals(signum).name
        if stage == SETUP:
            text = f"interrupted by {name} during setup, before training; nothing to resume: rerun the command"
        elif stage == POST_TRAIN:
            text = (f"interrupted by {name} after training, while pruning; the trained run is complete and kept: "
                    f"rerun with resume=auto to prune it again in place (no retraining), or prune it into another "
                    f"dir with prune.from_run={run_dir}")
        elif stage == PRUNING:
            text = (f"interrupted by {name} while pruning; nothing of the source run changed: rerun the same command "
                    f"with resume=auto to prune again in place")
        elif checkpoint_step is not None:
            text = f"interrupted by {name} at step {step}; checkpoint saved at step {checkpoint_step}, continue with resume=true"
        else:
            text = f"interrupted by {name} at step {step}; no checkpoint: rerun the command"
        super().__init__(text)
        self.signum, self.step, self.checkpoint_step, self.stage = signum, step, checkpoint_step, stage


class StopSignals:
    """The signal policy of one run (see the module docstring); ``stage`` is set by the run as it goes."""

    def __init__(self):
        self.stage = SETUP
        self.signum: int | None = None

    def enter(self, stage: str) -> None:
        """Move to ``stage``; a signal that arrived while deferring stops a stage that does not defer."""
        self.stage = stage
        if self.signum is not None and stage not in DEFERRED:
            raise RunInterrupted(self.signum, 0, stage=stage, run_dir=getattr(self, "run_dir", None))

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if self.stage in DEFERRED:
            log.warning("%s received: saving a checkpoint at the next safe point, then stopping (again: stop at once)",
                        signal.Signals(signum).name)
            return
        raise RunInterrupted(signum, 0, stage=self.stage, run_dir=getattr(self, "run_dir", None))

    @contextlib.contextmanager
    def installed(self, run_dir=None):
        """Handle SIGINT/SIGTERM while the block runs (main thread only), then restore the previous handlers;
        SIGTSTP pauses the run with the pause left out of its times (``runner.run_clock``)."""
        self.run_dir = run_dir
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with run_clock.counting_pauses():
                yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
