"""Composing the run config outside the command line (benchmarks, tests, notebooks)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str] | None = None, output_dir: Path | str | None = None) -> DictConfig:
    """The config ``python -m runner <overrides>`` would run, with ``output_dir`` set."""
    from runner.__main__ import _register_resolvers

    _register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir) if output_dir is not None else "unused"
    return cfg
