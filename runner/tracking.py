"""Metric logging: a JSON-lines file always, W&B on the main process only.

W&B goes offline by itself when no credentials exist, and ``finish`` is always
called (the entry point wraps the run in ``try/finally``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
from pathlib import Path

import yaml
from hydra.utils import get_method

from runner import run_files
from runner.atomic_io import atomic_write_text
from runner.network import unreachable
from runner.preflight.errors import ConfigError, first_line
from runner.secrets import scrub, secret_values

log = logging.getLogger(__name__)


def scrub_hydra_files(output_dir: Path, sweep_dir: Path | None = None) -> None:
    """Hydra writes the overrides and the composed config to ``<run dir>/.hydra/`` before the job
    starts, and a multirun's to ``<sweep dir>/multirun.yaml``; rewrite them without credential-looking
    values (``runner.sweep --resume`` reads a masked credential from the environment)."""
    paths = sorted((Path(output_dir) / ".hydra").glob("*.yaml"))
    if sweep_dir is not None:
        paths.append(Path(sweep_dir) / "multirun.yaml")
    secrets = secret_values()
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        cleaned = scrub(data, secrets, overrides=True)
        if cleaned != data:
            atomic_write_text(path, yaml.safe_dump(cleaned, sort_keys=False))


def wandb_has_credentials(api_key: str | None = None) -> bool:
    if api_key or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str, api_key: str | None = None) -> str:
    env = os.environ.get("WANDB_MODE")
    if env in ("offline", "disabled", "online"):
        return env
    if requested == "auto":
        return "online" if wandb_has_credentials(api_key) else "offline"
    if requested == "online" and not wandb_has_credentials(api_key):
        log.warning("logger.mode=online but no W&B credentials found; logging offline")
        return "offline"
    return requested


WANDB_INIT_TIMEOUT_S = 20.0  # W&B's own default waits 90 s for a server that does not answer


def wandb_unreachable() -> str | None:
    """Why the W&B server cannot be reached within a few seconds, or None."""
    return unreachable(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")


def _wandb_only(record: logging.LogRecord) -> bool:
    return not record.name.startswith("wandb")


@contextlib.contextmanager
def _wandb_log_kept_to_its_files():
    """W&B logs a failed ``wandb.init`` as an ERROR with a traceback (at once, or when its next init
    flushes the records it held back) and hands its records to the root logger's handlers (the
    user's console and log file), directly or by propagation; the runner says it in one line
    instead, so while a run starts, the root's handlers drop W&B's records (its debug.log keeps them)."""
    shared = list(logging.getLogger().handlers)  # W&B's logger's propagation is W&B's own (it turns it off)
    for handler in shared:
        handler.addFilter(_wandb_only)
    try:
        yield
    finally:
        for handler in shared:
            handler.removeFilter(_wandb_only)


def _start_wandb(cfg, output_dir: Path, config: dict, run_id: str | None):
    """``wandb.init`` that never hangs: with no server in reach, or a key the server refuses, it logs
    offline with one warning; when the user forced online (``logger.mode=online`` or
    ``WANDB_MODE=online``) it fails in one line instead."""
    # W&B's error reporting sends telemetry to W&B's own default host, in offline mode too (0.31): a run
    # talks to no server but the WANDB_BASE_URL it was given, unless the user opts in (WANDB_ERROR_REPORTING=true)
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    forced = os.environ.get("WANDB_MODE") == "online" or (cfg.logger.mode == "online" and "WANDB_MODE" not in os.environ)
    api_key = cfg.logger.get("api_key") or None
    mode = wandb_mode(cfg.logger.mode, api_key)

    def init(mode: str):
        clean = scrub  # every string W&B stores, not only the config: a secret typed into the group is masked
        # The server the reachability check asked, named explicitly: W&B keeps the settings of its first
        # init in the process, so a WANDB_BASE_URL set later would be ignored for its default host.
        server = {"base_url": os.environ["WANDB_BASE_URL"]} if os.environ.get("WANDB_BASE_URL") else {}
        if api_key:
            server["api_key"] = api_key
        return wandb.init(
            project=clean(cfg.logger.project), entity=clean(cfg.logger.entity), group=clean(cfg.logger.group),
            name=clean(cfg.run_name), tags=clean(list(cfg.logger.tags)), dir=str(output_dir), mode=mode,
            config=config, id=run_id, resume="allow" if run_id else None,
            # x_disable_meta: W&B would store the command line, credentials given as overrides included
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                                    init_timeout=WANDB_INIT_TIMEOUT_S, **server),
        )

    if mode != "online":
        return init(mode)
    problem = wandb_unreachable()
    if problem is None:
        try:
            return init("online")
        except Exception as exc:  # noqa: BLE001 (AuthenticationError, CommError, UsageError, timeouts)
            problem = f"{type(exc).__name__}: {first_line(exc)}"
    if forced:
        raise ConfigError(f"W&B online logging cannot start ({problem}); check WANDB_API_KEY / WANDB_BASE_URL, "
                          "or log offline with logger.mode=offline (wandb sync later)")
    log.warning("W&B server not usable (%s); logging offline to %s (wandb sync it later)", problem, output_dir)
    return init("offline")


def start_wandb(cfg, output_dir: Path, config: dict, run_id: str | None = None):
    """``logger=wandb``: a W&B run (offline by itself without a key or server), stepped by ``global_step``."""
    with _wandb_log_kept_to_its_files():
        run = _start_wandb(cfg, output_dir, config, run_id)
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    return run


class Tracker:
    """Logs scalars to ``metrics.jsonl`` and (optionally) W&B; main process only."""

    def __init__(self, cfg, output_dir: Path, is_main: bool, resolved_config: dict, run_id: str | None = None):
        self.is_main = is_main
        self.run = None
        self.path = Path(output_dir) / run_files.METRICS
        self._file = None
        if not is_main:
            return
        self._file = open(self.path, "a")
        target = cfg.logger.get("_target_")  # the logger (conf/logger/*.yaml); none: metrics.jsonl only
        if target:
            self.run = get_method(str(target))(cfg, output_dir, scrub(resolved_config), run_id)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    @property
    def run_dir(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        record = {"global_step": step, **metrics}
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log(record)

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            for k, v in scrub(metrics).items():  # an error message may quote an environment secret
                self.run.summary[k] = v

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.run is not None and Path(path).is_file():
            import wandb

            self.run.log({key: wandb.Image(str(path)), "global_step": step})

    def finish(self, exit_code: int = 0) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
