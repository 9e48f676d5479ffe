"""A job's validation before any heavy work, each check failing with one clear line."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from runner.methods import method_checks
from runner.preflight.config import CONF_DIR
from runner.preflight.errors import ConfigError
from runner.preflight.schema import GROUPS as SETTINGS_GROUPS, MOVED_GROUPS, TARGET_SETS, check_config
from runner.prune.settings import from_config

OVERLAY_GROUPS = ("experiment",)  # options that set keys of other groups: no settings of their own
GROUPS = (*SETTINGS_GROUPS, *OVERLAY_GROUPS)  # the groups a command line chooses options of (task=glue/mrpc)


def group_options(group: str) -> list[str]:
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_group_choices(overrides: list[str]) -> None:
    """``task=glue/foo`` -> one line naming the valid options (before Hydra composes)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
        if key in MOVED_GROUPS and sep:  # a group of its own until it became a setting (SAFE's policy)
            raise ConfigError(f"{key}= is now a SAFE setting: method=safe {MOVED_GROUPS[key]}={value or 'safe'} "
                              f"(safe, random, static or none)")
        if not sep or key not in GROUPS or value in ("", "null"):
            continue
        valid = group_options(key)
        for choice in _sweep_values(value):
            if choice not in valid:
                raise ConfigError(f"unknown {key} '{choice}'; valid: {', '.join(valid)}")


def _sweep_values(value: str) -> list[str]:
    if any(value.startswith(f) for f in ("choice(", "range(", "interval(", "glob(")):
        return []  # sweep functions: Hydra checks these
    return [v.strip() for v in value.split(",") if v.strip()]


SHARDING = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}  # set by accelerate launch


def check_sharding(cfg: DictConfig, env) -> None:
    """SAFE freezes adapters mid-run: the runner then rebuilds the DDP wrapper and drops their optimizer
    state, which FSDP's flattened parameter groups and DeepSpeed's engine do not allow. Refused in one
    line before anything loads; DDP (``accelerate launch --multi_gpu``) runs SAFE."""
    for var, name in SHARDING.items():
        if str(env.get(var, "")).lower() in ("1", "true", "yes") and cfg.method.name == "safe":
            raise ConfigError(f"method=safe freezes adapters during the run, which {name} does not support here; "
                              f"launch with DDP (accelerate launch --multi_gpu) or use method=adapter under {name}")


def validate_config(cfg: DictConfig):
    """A job's validation, cheap and before any loading: every key's type and range
    (:mod:`runner.preflight.schema`), then the checks that involve several keys (adapters, the method's
    own, pruning's). Returns the job's pruning settings (None: it does not prune), which the
    job then uses as they are. Each job runs it once (:func:`runner.app.execute`, whoever
    started the job: the command line, a sweep, Python); the command line also runs it on its
    own composition of the overrides before Hydra makes the run dir, so that bad input leaves
    no dir (a few milliseconds; both see the same config)."""
    check_config(cfg)  # first: every key's type and range, so the checks below see sound values
    if cfg.method.uses_adapters:
        a = cfg.adapter
        if a.name == "none":
            raise ConfigError(f"method={cfg.method.name} trains adapters but adapter=none; use adapter=lora or adapter=bottleneck")
        targets = a.get("target_modules")
        if isinstance(targets, str) and targets not in TARGET_SETS:
            raise ConfigError(f"adapter.target_modules={targets} is not a list of modules nor one of {', '.join(TARGET_SETS)}; "
                              "e.g. adapter.target_modules=auto or '[query,value]'")
        if not targets:
            raise ConfigError("adapter.target_modules is empty; use auto (the model family's) or name the modules, "
                              "e.g. [query, value]")
    method_checks(cfg)(cfg)  # SAFE: t_w < t_f, the policy's knobs
    check_sharding(cfg, os.environ)
    return from_config(cfg)  # prune.alpha=auto with its grid, from_run with a criterion
