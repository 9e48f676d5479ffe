"""Composing the run config outside the command line (benchmarks, tests, notebooks)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
# Where task.data_dir looks when GLUE_DIR is not set, in this order (then the Hub)
LOCAL_GLUE_DIRS = (REPO.parent / "shared" / "data" / "glue", REPO / "data" / "glue")


def default_glue_dir() -> str | None:
    """``task.data_dir``'s default: ``$GLUE_DIR``, else the first local GLUE folder that exists, else None (the Hub)."""
    env = os.environ.get("GLUE_DIR")
    if env:
        return env
    found = next((p for p in LOCAL_GLUE_DIRS if p.is_dir()), None)
    return str(found) if found is not None else None


def register_resolvers() -> None:
    """The runner's interpolations: ``${run_stamp:}``, ``${sweep_group:<default>}``, ``${glue_dir:}``."""

    def run_stamp() -> str:
        return os.environ.get("RUNNER_RUN_STAMP") or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")

    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("sweep_group"):  # sweep: W&B group shared by a multirun's jobs
        from runner.jobs import sweep_group

        OmegaConf.register_new_resolver("sweep_group", sweep_group)
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", default_glue_dir)


def compose_config(overrides: list[str] | None = None, output_dir: Path | str | None = None) -> DictConfig:
    """The config ``python -m runner <overrides>`` would run, with ``output_dir`` set."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir) if output_dir is not None else "unused"
    return cfg
