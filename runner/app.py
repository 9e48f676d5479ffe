"""What one job does, and how it fails: validation, training, pruning.

Exit codes (documented in the README):
  2 config error, 3 data error, 4 model error, 5 loss diverged (NaN/inf),
  6 out of memory, 7 cannot write (disk full, read-only, no permission),
  8 a run's record or checkpoint is damaged,
  130/143 interrupted by SIGINT/SIGTERM (runner.stop_signals).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.jobs import hydra_job, record_failure, resolve_auto_resume
from runner.preflight.errors import ConfigError, UserError, first_line
from runner.preflight.validate import validate_config
from runner.runs import RETIRED, DirLock, traces
from runner.secrets import install_log_filter, scrub_text
from runner.summary import run_summary
from runner.tracking import scrub_hydra_files

log = logging.getLogger("runner")

EXIT_DIVERGED, EXIT_OOM, EXIT_STORAGE = 5, 6, 7
EXIT_SIGINT = 130
# errors writing run outputs, the cache or the checkpoint: not the runner's fault, not the user's input
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
OOM_HINT = ("out of memory; lower trainer.batch_size (with trainer.grad_accum_steps to keep the effective batch), "
            "trainer.max_seq_length, or use trainer.mixed_precision=bf16")


def _quiet_libraries(verbose: bool = False) -> None:
    """Libraries say only what matters (errors), unless ``verbose=true``: no weight-loading bars,
    no deprecation warnings aimed at library authors, no Accelerate INFO lines per checkpoint file."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers
    from huggingface_hub.utils import logging as hub_logging

    if verbose:
        transformers.logging.set_verbosity_info()
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    hub_logging.set_verbosity_error()
    for name in ("accelerate", "torch.distributed", "wandb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for module in ("transformers", "peft", "accelerate", "torch", "datasets"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    warnings.filterwarnings("ignore", message="All adapters are already merged")  # PEFT, when SAFE merged a layer


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _remove_empty_run_dir(output_dir: Path) -> None:
    """A run stopped by bad input leaves no dir behind (only Hydra's own files were there),
    unless another run holds the dir (then it is that run's)."""
    if not output_dir.is_dir():
        return

    try:
        lock = DirLock(output_dir).acquire()
    except ConfigError:
        return
    try:
        if not traces(output_dir) and not (output_dir / RETIRED).exists():
            shutil.rmtree(output_dir, ignore_errors=True)
    finally:
        lock.release()


def _fail(message: str, code: int, cfg: DictConfig, exc: BaseException | None = None, stop_sweep: bool = False) -> None:
    if cfg.get("debug"):
        traceback.print_exc()
    print(f"error: {scrub_text(message)}", file=sys.stderr)
    if not _is_multirun():
        sys.exit(code)
    # sweep: the job's dir keeps a failure record and the sweep goes on (a signal stops it)
    try:
        record_failure(cfg, Path(cfg.output_dir), exc or RuntimeError(message), code)
    except OSError as write_error:  # a full disk: the sweep's own summary still lists the job
        log.warning("could not write the failure record of %s: %s", cfg.output_dir, write_error)
    if stop_sweep:
        sys.exit(code)


def _resume_hint(output_dir: Path) -> str:
    """What a resume would continue from, as the record says."""
    from runner import checkpoint

    try:
        meta = checkpoint.load_meta(output_dir)
    except Exception:  # noqa: BLE001 (a damaged checkpoint: nothing to resume)
        meta = None
    if meta is None:
        return "no checkpoint to resume from"
    return f"resume=true continues from the checkpoint at step {meta['global_step']}"


def execute(cfg: DictConfig) -> float | None:
    """Run the configured job; returns the main metric (for sweepers)."""
    import torch

    from runner.train import RunInterrupted, TrainingDiverged

    _quiet_libraries(bool(cfg.get("verbose")))
    install_log_filter()  # secrets stay out of the job's log file too
    output_dir = Path(cfg.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        # credentials given as overrides stay out of .hydra/ and a multirun's multirun.yaml

        scrub_hydra_files(output_dir, hydra_job().get("sweep_dir"))
    try:
        return _run_job(cfg, output_dir)
    except UserError as exc:
        if not _is_multirun():
            _remove_empty_run_dir(output_dir)
        _fail(str(exc), exc.exit_code, cfg, exc)
    except TrainingDiverged as exc:
        _fail(f"{exc}; results marked failed, last good checkpoint kept in {output_dir}", EXIT_DIVERGED, cfg, exc)
    except torch.OutOfMemoryError as exc:
        _fail(OOM_HINT, EXIT_OOM, cfg, exc)
    except RunInterrupted as exc:
        # sweep: Ctrl-C/SIGTERM stops the whole sweep, not just this job (resume: python -m runner.sweep --resume)
        if exc.stage == "setup" and not _is_multirun():
            _remove_empty_run_dir(output_dir)
        _fail(str(exc), 128 + int(exc.signum), cfg, exc, stop_sweep=True)
    except KeyboardInterrupt as exc:  # a second signal: stopped at once
        _fail(f"stopped at once by a second signal; {_resume_hint(output_dir)}", EXIT_SIGINT, cfg, exc, stop_sweep=True)
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            _crashed(exc, cfg)
            return None
        where = exc.filename or output_dir
        _fail(f"cannot write {where}: {exc.strerror or exc}; free space or choose a writable place "
              f"(hydra.run.dir=..., data_cache_dir=...); {_resume_hint(output_dir)}", EXIT_STORAGE, cfg, exc)
    except Exception as exc:
        _crashed(exc, cfg)
    return None


def _run_job(cfg: DictConfig, output_dir: Path) -> float | None:
    """Validate once, then prune a saved run, skip a completed one (resume=auto), or train (and prune)."""
    from runner.prune import stage as prune_stage
    from runner.train import run

    prune = validate_config(cfg)  # the job's validation; returns the pruning settings (None: no pruning)
    # head pruning (runner.prune, docs/hies.md): a saved run skips training
    if prune is not None and prune.from_run:
        results = prune_stage.prune_saved_run(cfg, prune)
        return results["metrics"].get(results["main_metric"])
    if prune is not None and prune_stage.needs_pruning_again(cfg):  # resume of a run interrupted while pruning
        results = prune_stage.prune_trained_run_again(cfg, prune)
        return results.get("pruning", {}).get("primary", {}).get("main_metric")
    done = resolve_auto_resume(cfg)  # sweep: resume=auto skips a completed job, continues an interrupted one
    if done is not None:
        log.info("%s already completed; skipped (resume=auto)", output_dir)
        return done["metrics"].get(cfg.task.main_metric)
    results = run(cfg, post_train=prune_stage.after_training(prune) if prune is not None else None)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_summary(results, output_dir), file=sys.stderr, flush=True)
    if "pruning" in results:  # the job's final model is the pruned one
        return results["pruning"]["primary"]["main_metric"]
    return results["metrics"].get(cfg.task.main_metric)


def _crashed(exc: Exception, cfg: DictConfig) -> None:
    """Any other crash: one line naming the log that holds the traceback (debug=true: the traceback here
    too); in a sweep it fails this job only."""
    if cfg.get("debug") and not _is_multirun():
        raise exc
    logs = _log_traceback_to_files(exc, f"job {cfg.get('run_name')} crashed")
    where = f"traceback in {logs[0]}" if logs else "debug=true prints the traceback"
    _fail(f"job {cfg.get('run_name')} crashed: {type(exc).__name__}: {first_line(exc)} ({where})", 1, cfg, exc)


def _log_traceback_to_files(exc: BaseException, message: str) -> list[str]:
    """Write the traceback to the log files only (Hydra's ``<run dir>/<job>.log``), not to the console."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler) and h.baseFilename != os.devnull]
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, (type(exc), exc, exc.__traceback__))
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]
