"""Metric logging: a JSON-lines file always, W&B on the main process only.

W&B goes offline by itself when no credentials exist, and ``finish`` is always
called (the entry point wraps the run in ``try/finally``).
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_KEY_RE = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.I)
SECRET_ENV_RE = re.compile(r"(WANDB_API_KEY|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|_TOKEN$|_KEY$|SECRET|PASSWORD)", re.I)


def secret_values() -> list[str]:
    """Values of credential-looking environment variables (to keep them out of files)."""
    return [v for k, v in os.environ.items() if SECRET_ENV_RE.search(k) and v and len(v) >= 6]


# key=value pairs inside a string (an override, Hydra's comma-joined override_dirname)
SECRET_OVERRIDE_RE = re.compile(r"([\w.+~/-]*(?:api[_-]?key|token|secret|password|passwd|credential)[\w.-]*)=([^,\s]+)", re.I)


def scrub(obj, secrets: list[str] | None = None, overrides: bool = False):
    """Replace credential-looking keys' values and any known secret value with '***'; with
    ``overrides``, also the values of credential-looking ``key=value`` pairs inside strings."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: "***" if SECRET_KEY_RE.search(str(k)) and v not in (None, "") else scrub(v, secrets, overrides)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, secrets, overrides) for v in obj]
    if isinstance(obj, str):
        if overrides:
            obj = SECRET_OVERRIDE_RE.sub(lambda m: f"{m.group(1)}=***", obj)
        for s in secrets:
            obj = obj.replace(s, "***")
    return obj


def scrub_hydra_files(output_dir: Path) -> None:
    """Hydra writes the overrides and the composed config to ``<run dir>/.hydra/`` before the
    job starts; rewrite them without credential-looking values."""
    import yaml

    from runner.results import atomic_write_text

    folder = Path(output_dir) / ".hydra"
    if not folder.is_dir():
        return
    secrets = secret_values()
    for path in folder.glob("*.yaml"):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        cleaned = scrub(data, secrets, overrides=True)
        if cleaned != data:
            atomic_write_text(path, yaml.safe_dump(cleaned, sort_keys=False))


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if env in ("offline", "disabled", "online"):
        return env
    if requested == "auto":
        return "online" if wandb_has_credentials() else "offline"
    if requested == "online" and not wandb_has_credentials():
        log.warning("logger.mode=online but no W&B credentials found; logging offline")
        return "offline"
    return requested


class Tracker:
    """Logs scalars to ``metrics.jsonl`` and (optionally) W&B; main process only."""

    def __init__(self, cfg, output_dir: Path, is_main: bool, resolved_config: dict, run_id: str | None = None):
        self.is_main = is_main
        self.run = None
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        if not is_main:
            return
        self._file = open(self.path, "a")
        if cfg.logger.name == "wandb":
            import wandb

            mode = wandb_mode(cfg.logger.mode)
            self.run = wandb.init(
                project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
                name=cfg.run_name, tags=list(cfg.logger.tags), dir=str(output_dir), mode=mode,
                config=scrub(resolved_config), id=run_id, resume="allow" if run_id else None,
                # x_disable_meta: W&B would store the command line, credentials given as overrides included
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True),
            )
            self.run.define_metric("global_step")
            self.run.define_metric("*", step_metric="global_step")

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
            for k, v in metrics.items():
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
