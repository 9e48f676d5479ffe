"""One job among many: nothing leaks into the next job, every failure leaves a record.

A Hydra multirun with the basic launcher runs its jobs one after another in one
process. Three things would otherwise cross from one job into the next:

* Accelerate's ``AcceleratorState``/``PartialState``/``GradientState`` are
  process-wide singletons; a second ``Accelerator`` silently reuses the first
  job's settings (or refuses another ``mixed_precision``).
  :func:`reset_accelerate_state` clears them when a run ends.
* W&B: each run is finished in ``runner.train.run``'s ``finally``.
* A failed job must not stop or hide itself: :func:`record_failure` leaves a
  failure record (``runner.runs``) in the job's dir when the run did
  not write one itself (it failed before training started).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from runner import run_files, runs
from runner.preflight.errors import RecordError
from runner.results import STATUS_COMPLETED, STATUS_FAILED, identity, read_record, record_problem, write_failure


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state so the next ``Accelerator()`` starts fresh.

    Call only after ``accelerator.end_training()`` (which destroys the process
    group of a distributed run); accelerate 1.x has no public API for this.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def hydra_job() -> dict:
    """This job's number, overrides and sweep dir when Hydra runs it ({} outside Hydra)."""
    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra job
        return {}
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": multirun,
        "num": hc.job.get("num") if multirun else None,
        "overrides": list(hc.overrides.task),
        "sweep_dir": str(hc.sweep.dir) if multirun else None,
    }


def sweep_group(default: str) -> str:
    """W&B group: a multirun's jobs share one group (its sweep dir's name); a single run keeps ``default``.

    Used as ``logger.group: ${sweep_group:<default>}``; ``logger.group=...`` on
    the command line still wins, and ``python -m runner.sweep`` passes it.
    """
    sweep_dir = hydra_job().get("sweep_dir")
    return Path(sweep_dir).name if sweep_dir else default


def record_failure(cfg, output_dir: Path, exc: BaseException, exit_code: int, stage: str = "before_training") -> Path | None:
    """Leave a failure record in the job's dir unless the run wrote one (:func:`runner.results.write_failure`).

    ``runner.train.run`` writes failed/interrupted results itself once training
    has started; this covers the failures before that (bad data, bad model,
    invalid values), which a single run reports on stderr and leaves no dir for.
    """
    output_dir = Path(output_dir)
    if (output_dir / run_files.RESULTS).exists() or int(os.environ.get("RANK", "0")) != 0:
        return None
    job = hydra_job()
    return write_failure(output_dir, STATUS_FAILED, f"{type(exc).__name__}: {exc}", stage=stage,
                              who=identity(cfg), exit_code=exit_code,
                              job={"num": job.get("num"), "overrides": job.get("overrides")})


def resolve_auto_resume(cfg) -> dict | None:
    """``resume=auto``: rerunning a job into its dir does what is needed, whatever state it was left in.

    * completed: nothing to do; returns its results (the caller returns its metric);
    * a checkpoint is there (interrupted, killed, requeued by SLURM): continue it (``resume=true``);
    * otherwise start fresh (``resume=false``); what a previous failed attempt
      wrote is moved to ``<dir>/.retired/<n>/``, never deleted.

    This makes rerunning a whole sweep into its old dir (``hydra.sweep.dir=<dir> resume=auto``,
    any launcher) skip completed jobs and continue interrupted ones.
    """
    from runner import checkpoint

    if str(cfg.get("resume")).lower() != "auto":
        return None
    output_dir = Path(cfg.output_dir)
    problem = record_problem(output_dir)
    if problem:  # never rerun over what may be a finished job's only record
        raise RecordError(problem)
    previous = read_record(output_dir)
    if previous and previous.get("status") == STATUS_COMPLETED:
        return previous
    resume = checkpoint.load_meta(output_dir) is not None
    if not resume and runs.traces(output_dir) and int(os.environ.get("RANK", "0")) == 0:
        runs.retire_traces(output_dir)
    with open_dict(cfg):
        cfg.resume = resume
    return None
