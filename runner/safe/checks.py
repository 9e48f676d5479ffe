"""SAFE's checks across keys, before anything heavy loads (torch-free: the pre-flight imports only this).

Each knob's own type and range is :class:`runner.schema.SafeSettings`'; here what needs several keys: the
policy needs SAFE's knobs, t_w < t_f within the run, adapters to freeze, ``freeze=static`` a count.
``conf/method/safe.yaml`` names this function as ``method.checks``.
"""

from __future__ import annotations

from runner.errors import ConfigError
from runner.safe import schedule
from runner.schema import settings_of


def check_config(cfg) -> None:
    policy = str(cfg.freeze.name) if cfg.get("freeze") is not None else "none"
    if not cfg.method.uses_adapters:
        raise ConfigError("method=safe freezes adapters; it needs method.uses_adapters=true")
    if policy != "none" and cfg.get("safe") is None:
        raise ConfigError(f"freeze={policy} needs the `safe:` config node (conf/freeze/safe.yaml)")
    s = settings_of("safe", cfg.safe) if cfg.get("safe") is not None else None
    if s is not None:
        try:  # epochs: the run's are known here unless max_steps sets them (then checked again in setup)
            epochs = None if cfg.trainer.max_steps else float(cfg.trainer.epochs)
            schedule.validate(s.t_w, s.t_f, s.threshold, s.schedule_unit, epochs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if policy == "static" and s.static_k is None:
        raise ConfigError("freeze=static needs safe.static_k (the number of lowest adapters to freeze; "
                          "the benchmark passes SAFE's final frozen count)")
