"""Composing the run config outside the command line (benchmarks, tests, notebooks)."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import run_files
from runner.jobs import sweep_group
from runner.preflight.schema import declared_defaults
from runner.results import read_record
from runner.secrets import scrub

REPO = Path(__file__).resolve().parents[2]
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


NAME_LIMIT = 120  # characters of a run name in a dir name (a file name may hold 255 bytes)


def dir_name(name) -> str:
    """A setting as one path component: anything but letters, digits, ``.``, ``_``, ``-``, ``=`` and ``+``
    becomes ``-`` (no ``/``, no ``..`` climbing out of ``outputs/``), leading dots and dashes go, at most
    :data:`NAME_LIMIT` characters. Every dir Hydra names after ``run_name`` goes through it."""
    safe = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(name)).strip(".-")
    return safe[:NAME_LIMIT].rstrip(".-") or "run"


def run_label(default: str, from_run, criterion) -> str:
    """``run_name``: ``<task>-<model>-<method>-s<seed>``; a job that prunes a saved run
    (``prune.from_run``) is named after what it does: ``prune-<criterion>-<source run's name>``,
    so its dir name says so from the start (Hydra names the dir before the job runs)."""
    if from_run in (None, "", "None", "null"):
        return default
    src = Path(str(from_run)).expanduser()
    name = None
    try:
        name = (read_record(src) or {}).get("run_name")
    except OSError:
        pass
    if not name:
        try:
            name = (OmegaConf.load(src / run_files.CONFIG) or {}).get("run_name")
        except Exception:  # noqa: BLE001 (no readable source: the pruning stage says why in one line)
            name = None
    return f"prune-{criterion}-{name or src.name}"


def model_short_name(name_or_path, default_path=None, default_name=None) -> str:
    """``model.short_name``'s default: ``default_name`` while ``model.name_or_path`` is still the model
    group's own ``default_path``, else a name derived from the path (a folder's name, a Hub id's last
    part, a package's module), so a run on another model never carries the group's name."""
    path = str(name_or_path or "")
    if default_name is not None and path == str(default_path):
        return str(default_name)
    tail = path.split(":", 1)[1] if path.startswith("package:") else path.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^a-z0-9._-]+", "-", tail.lower()).strip("-.")
    return name or "model"


def group_choice(name_or_path, default_path, choice, otherwise):
    """A model group's measured choice (MiniLM's ``cls`` pooling) while ``model.name_or_path`` is still the
    group's own model, ``otherwise`` for any other model: a choice made for one model is not silently
    applied to another (a decoder's head reads its last token, not a pooler)."""
    return choice if str(name_or_path or "") == str(default_path) else otherwise


def register_config() -> None:
    """What Hydra needs before it composes ``conf/``: the declared defaults and the runner's interpolations."""
    register_declared_defaults()
    register_resolvers()


def register_declared_defaults() -> None:
    """Every group's declared defaults (runner.preflight.schema, the one place they live) as the ``schema`` options
    that the yaml files of ``conf/`` start from (``defaults: [schema, _self_]``)."""
    store = ConfigStore.instance()
    for key, node in declared_defaults().items():
        group, name = key.split("/")
        store.store(group=group, name=name, node=node, provider="runner.preflight.schema")


def register_resolvers() -> None:
    """The runner's interpolations: ``${run_stamp:}``, ``${sweep_group:<default>}``, ``${glue_dir:}``,
    ``${run_label:<default>,<prune.from_run>,<prune.name>}``, ``${model_short_name:<path>[,<default path>,<name>]}``,
    ``${group_choice:<path>,<default path>,<choice>,<otherwise>}``, ``${dir_name:<name>}``."""

    def run_stamp() -> str:
        return os.environ.get("RUNNER_RUN_STAMP") or datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")

    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("sweep_group"):  # sweep: W&B group shared by a multirun's jobs
        OmegaConf.register_new_resolver("sweep_group", sweep_group)
    if not OmegaConf.has_resolver("run_label"):
        OmegaConf.register_new_resolver("run_label", run_label)
    if not OmegaConf.has_resolver("model_short_name"):
        OmegaConf.register_new_resolver("model_short_name", model_short_name)
    if not OmegaConf.has_resolver("dir_name"):
        OmegaConf.register_new_resolver("dir_name", dir_name)
    if not OmegaConf.has_resolver("group_choice"):
        OmegaConf.register_new_resolver("group_choice", group_choice)
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", default_glue_dir)


def resolved_config(cfg: DictConfig) -> dict:
    """The config as it runs: interpolations resolved, secrets masked (config.yaml, W&B, a saved model)."""
    return scrub(OmegaConf.to_container(cfg, resolve=True))


def compose_config(overrides: list[str] | None = None, output_dir: Path | str | None = None) -> DictConfig:
    """The config ``python -m runner <overrides>`` would run, with ``output_dir`` set."""
    register_config()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir) if output_dir is not None else "unused"
    return cfg
