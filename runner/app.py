"""What one job does, and how it fails: validation, training, pruning.

Exit codes (documented in the README):
  2 config error, 3 data error, 4 model error, 5 loss diverged (NaN/inf),
  6 out of memory, 130/143 interrupted by SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.errors import UserError

log = logging.getLogger("runner")

EXIT_DIVERGED, EXIT_OOM = 5, 6
OOM_HINT = ("out of memory; lower trainer.batch_size (with trainer.grad_accum_steps to keep the effective batch), "
            "trainer.max_seq_length, or use trainer.mixed_precision=bf16")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers
    from huggingface_hub.utils import logging as hub_logging

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    hub_logging.set_verbosity_error()


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _remove_empty_run_dir(output_dir: Path) -> None:
    """A run stopped by bad input leaves no dir behind (only Hydra's own files were there)."""
    if not output_dir.is_dir():
        return
    leftovers = [p for p in output_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if not leftovers:
        shutil.rmtree(output_dir, ignore_errors=True)


def _fail(message: str, code: int, cfg: DictConfig) -> None:
    if cfg.get("debug"):
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    if not _is_multirun():
        sys.exit(code)


def execute(cfg: DictConfig) -> float | None:
    """Run the configured job; returns the main metric (for sweepers)."""
    import torch

    from runner.train import RunInterrupted, TrainingDiverged, run
    from runner.validate import validate_config

    _quiet_libraries()
    output_dir = Path(cfg.output_dir)
    try:
        validate_config(cfg)
        results = run(cfg)
        return results["metrics"].get(cfg.task.main_metric)
    except UserError as exc:
        _remove_empty_run_dir(output_dir)
        _fail(str(exc), exc.exit_code, cfg)
    except TrainingDiverged as exc:
        _fail(f"{exc}; results marked failed, last good checkpoint kept in {output_dir}", EXIT_DIVERGED, cfg)
    except torch.OutOfMemoryError:
        _fail(OOM_HINT, EXIT_OOM, cfg)
    except RunInterrupted as exc:
        _fail(str(exc), 128 + int(exc.signum), cfg)
    return None
