"""SAFE's checks across keys, before anything heavy loads (torch-free: the pre-flight imports only this).

Each knob's own type and range is :class:`runner.preflight.schema.SafeSettings`'; here what needs several keys: the
method needs its ``safe`` group, t_w < t_f within the run, adapters to freeze, ``safe.policy=static`` a count.
``conf/method/safe.yaml`` names this function as ``method.checks``.
"""

from __future__ import annotations

from runner.preflight.errors import ConfigError
from runner.preflight.schema import SafeSettings, settings_of
from runner.safe import schedule


def safe_settings(cfg) -> SafeSettings:
    """SAFE's settings parsed once (runner.preflight.schema.SafeSettings), policy included."""
    if cfg.get("safe") is None:
        raise ConfigError("method=safe needs its `safe:` settings (conf/safe/default.yaml, which conf/method/safe.yaml "
                          "loads); compose the config from conf/train.yaml")
    return settings_of("safe", cfg.safe)


def check_config(cfg) -> None:
    if not cfg.method.uses_adapters:
        raise ConfigError("method=safe freezes adapters; it needs method.uses_adapters=true")
    s = safe_settings(cfg)
    try:  # epochs: the run's are known here unless max_steps sets them (then checked again in setup)
        epochs = None if cfg.trainer.max_steps else float(cfg.trainer.epochs)
        schedule.validate(s.t_w, s.t_f, s.threshold, s.schedule_unit, epochs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if s.policy == "static" and s.static_k is None:
        raise ConfigError("safe.policy=static needs safe.static_k (the number of lowest adapters to freeze; "
                          "the benchmark passes SAFE's final frozen count)")
