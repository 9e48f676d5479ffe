"""SAFE's checks across keys, before anything heavy loads (torch-free: the pre-flight imports only this).

Each knob's own type and range is :class:`runner.schema.SafeSettings`'; here what needs several keys: the
policy needs SAFE's knobs, t_w < t_f within the run, adapters to freeze, ``freeze=static`` a count.
``conf/method/safe.yaml`` names this function as ``method.checks``.
"""

from __future__ import annotations

from runner.errors import ConfigError
from runner.safe import schedule
from runner.schema import SafeSettings, settings_of


def policy_of(cfg) -> str:
    """The freezing policy (``freeze.name``): safe, random, static, or none without the group."""
    return str(cfg.freeze.name) if cfg.get("freeze") is not None else "none"


def safe_settings(cfg) -> SafeSettings | None:
    """SAFE's settings parsed once (runner.schema.SafeSettings); None without the ``safe`` group."""
    return settings_of("safe", cfg.safe) if cfg.get("safe") is not None else None


def check_config(cfg) -> None:
    policy = policy_of(cfg)
    if not cfg.method.uses_adapters:
        raise ConfigError("method=safe freezes adapters; it needs method.uses_adapters=true")
    if policy != "none" and cfg.get("safe") is None:
        raise ConfigError(f"freeze={policy} needs the `safe:` config node (conf/freeze/safe.yaml)")
    s = safe_settings(cfg)
    if s is not None:
        try:  # epochs: the run's are known here unless max_steps sets them (then checked again in setup)
            epochs = None if cfg.trainer.max_steps else float(cfg.trainer.epochs)
            schedule.validate(s.t_w, s.t_f, s.threshold, s.schedule_unit, epochs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if policy == "static" and s.static_k is None:
        raise ConfigError("freeze=static needs safe.static_k (the number of lowest adapters to freeze; "
                          "the benchmark passes SAFE's final frozen count)")
