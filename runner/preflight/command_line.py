"""The checks ``python -m runner`` makes on its command line before Hydra makes a run dir.

An unknown group option, key or bad value fails in one line (exit 2), a misspelt key with "did you
mean"; an output root that cannot be written fails in one line (exit 7) instead of Hydra's traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.preflight.config import compose_config
from runner.preflight.errors import ConfigError, OutputError
from runner.preflight.schema import entries_field
from runner.preflight.validate import check_group_choices, validate_config

INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info")  # print and exit: nothing runs, no run dir
MULTIRUN_FLAGS = ("-m", "--multirun")


def asks_for_information(argv: list[str]) -> bool:
    """``--help``, ``--cfg job`` and the like: Hydra prints and runs nothing."""
    return any(a in INFO_FLAGS or a.startswith("--cfg") for a in argv)


def check_overrides(argv: list[str]) -> None:
    """Unknown group options, keys and bad values fail in one line (:class:`ConfigError`)."""
    args = [a for a in argv if not a.startswith("-")]
    check_group_choices(args)
    if any(a in MULTIRUN_FLAGS for a in argv) or asks_for_information(argv):
        return  # sweeps are checked job by job
    overrides = [a for a in args if not a.startswith("hydra.") and not a.startswith("hydra/")]
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(unknown_key_hint(str(exc), overrides) or one_line(exc)) from exc
    validate_config(cfg)


def unknown_key_hint(message: str, overrides: list[str]) -> str | None:
    """Hydra's "Could not override 'trainer.lrr'... To append use +trainer.lrr" leads the wrong way
    for a misspelling: name the closest real key instead."""
    match = re.search(r"Could not override '([\w.]+)'", message)
    if not match:
        return None
    key = match.group(1)
    if key.startswith("safe.") and "method=safe" not in overrides:
        return f"{key} is one of SAFE's settings: add method=safe"
    where = entries_field(key)
    if where:  # a dict of free entries (model.config_overrides): Hydra adds them only with "+"
        return f"{where} takes entries of your own: add them with a leading +, e.g. +{where}.NAME=VALUE"
    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose_config([o for o in overrides if not o.split("=", 1)[0].lstrip("~") == key])
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # noqa: BLE001 (the other overrides may be what failed: keep Hydra's message)
        return None
    if node is None or not hasattr(node, "keys"):
        return None
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1, cutoff=0.6)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}?" if close else f"valid: {', '.join(str(k) for k in node.keys())}"
    return f"{key} is not a setting; {hint}"


def check_output_root_writable(argv: list[str]) -> None:
    """Hydra creates the run (or sweep) dir before the job starts and fails with a traceback where it
    cannot: probe the place first, and fail in one line (:class:`OutputError`, exit 7) instead."""
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    target = next((a[len(key):] for a in argv if a.startswith(key)), "outputs")
    place = Path(target).expanduser().absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        if not place.is_dir():
            raise NotADirectoryError(20, "not a directory", str(place))
        fd, probe = tempfile.mkstemp(dir=place, prefix=".runner-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write the run dir {target} ({place}: {exc.strerror or exc}); choose a writable "
                          f"{key[:-1]}=...") from exc


def one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(("full_key", "object_type"))]
    return "invalid override: " + "; ".join(lines[:3])
