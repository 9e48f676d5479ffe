"""Checks that run before any heavy work, each failing with one clear line."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from runner.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("task", "model", "adapter", "method", "trainer", "logger", "experiment", "freeze", "prune")
LR_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


def group_options(group: str) -> list[str]:
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_group_choices(overrides: list[str]) -> None:
    """``task=glue/foo`` -> one line naming the valid options (before Hydra composes)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
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


def _number(value) -> bool:
    """A real, finite number (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value, name: str, integer: bool = False) -> None:
    ok = _number(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def _fraction(value, name: str, closed_right: bool = True) -> None:
    ok = _number(value) and 0 <= value and (value <= 1 if closed_right else value < 1)
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")


def check_sequence_length(max_seq_length: int, tokenizer, model_config, text_keys) -> None:
    """``trainer.max_seq_length`` within what the tokenizer needs and the model's positions allow."""
    special = tokenizer.num_special_tokens_to_add(pair=len(text_keys) > 1)
    low = special + len(text_keys)  # one token of each text
    positions = int(getattr(model_config, "max_position_embeddings", 0) or 0)
    if model_config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= int(model_config.pad_token_id) + 1  # RoBERTa's positions start after the padding index
    if max_seq_length < low:
        raise ConfigError(f"trainer.max_seq_length={max_seq_length} leaves no room for the text: the tokenizer adds "
                          f"{special} special tokens; use at least {low} (128 is usual)")
    if positions > 0 and max_seq_length > positions:
        raise ConfigError(f"trainer.max_seq_length={max_seq_length} exceeds the model's {positions} positions; "
                          f"use trainer.max_seq_length={positions} or less")


def validate_config(cfg: DictConfig) -> None:
    """Values out of range, inconsistent choices; cheap and before any loading."""
    t = cfg.trainer
    _positive(t.batch_size, "trainer.batch_size", integer=True)
    _positive(t.eval_batch_size, "trainer.eval_batch_size", integer=True)
    _positive(t.lr, "trainer.lr")
    _positive(t.grad_accum_steps, "trainer.grad_accum_steps", integer=True)
    _positive(t.max_seq_length, "trainer.max_seq_length", integer=True)
    if t.max_steps is not None:
        _positive(t.max_steps, "trainer.max_steps", integer=True)
    else:
        _positive(t.epochs, "trainer.epochs", integer=True)
    _fraction(t.warmup_ratio, "trainer.warmup_ratio", closed_right=False)
    if not _number(t.weight_decay) or t.weight_decay < 0:
        raise ConfigError(f"trainer.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    if t.max_grad_norm is not None and (not _number(t.max_grad_norm) or t.max_grad_norm < 0):
        raise ConfigError(f"trainer.max_grad_norm must be a finite number >= 0 (0 or null: no clipping), got {t.max_grad_norm}")
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"trainer.mixed_precision must be one of no, fp16, bf16, got {t.mixed_precision!r}")
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"trainer.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}")
    for name in ("eval_every_steps", "checkpoint_every_steps"):
        if t[name] is not None:
            _positive(t[name], f"trainer.{name}", integer=True)
    _positive(t.log_every_steps, "trainer.log_every_steps", integer=True)
    for name in ("max_train_samples", "max_eval_samples"):
        if cfg.task[name] is not None:
            _positive(cfg.task[name], f"task.{name}", integer=True)
    holdout = cfg.task.get("holdout_samples")
    if holdout not in (None, 0):
        _positive(holdout, "task.holdout_samples (training examples kept out of fine-tuning)", integer=True)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")

    if cfg.method.uses_adapters:
        a = cfg.adapter
        if a.name == "none":
            raise ConfigError(f"method={cfg.method.name} trains adapters but adapter=none; use adapter=lora or adapter=bottleneck")
        if not a.get("target_modules"):
            raise ConfigError("adapter.target_modules is empty; name the modules to adapt, e.g. [query, value]")
        if a.name == "lora":
            _positive(a.r, "adapter.r (LoRA rank)", integer=True)
            _positive(a.alpha, "adapter.alpha")
            _fraction(a.dropout, "adapter.dropout", closed_right=False)
        if a.name == "bottleneck":
            from runner.adapters import ACTIVATIONS

            _positive(a.reduction_factor, "adapter.reduction_factor", integer=True)
            if a.activation not in ACTIVATIONS:
                raise ConfigError(f"adapter.activation must be one of {', '.join(ACTIVATIONS)}, got {a.activation!r}")
    from runner.methods import build_method

    build_method(cfg)  # each method checks its own knobs (SAFE: schedule, probe, policy)
    from runner.prune.stage import check as check_pruning

    check_pruning(cfg)  # ratio in [0, 1), alpha in [0, 1] or auto, criteria, from_run
    if cfg.logger.name == "wandb" and cfg.logger.mode not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"logger.mode must be auto, online, offline or disabled, got {cfg.logger.mode!r}")
