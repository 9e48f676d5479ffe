"""What one job does, and how it fails: validation, training, pruning."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.errors import UserError

log = logging.getLogger("runner")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def execute(cfg: DictConfig) -> float | None:
    """Run the configured job; returns the main metric (for sweepers)."""
    _quiet_libraries()
    try:
        from runner.train import run

        # --- head pruning (runner.prune, docs/hies.md): checked before training; a saved run skips training
        from runner.prune import stage as prune_stage

        prune = prune_stage.check(cfg)
        if prune is not None and prune.from_run:
            results = prune_stage.prune_saved_run(cfg)
            return results["metrics"].get(results["main_metric"])
        results = run(cfg, post_train=prune_stage.after_training if prune is not None else None)
        if "pruning" in results:  # the job's final model is the pruned one
            return results["pruning"]["primary"]["main_metric"]
        # --- end head pruning
        return results["metrics"].get(cfg.task.main_metric)
    except UserError as exc:
        if cfg.get("debug"):
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        if _is_multirun():
            return None
        sys.exit(exc.exit_code)
