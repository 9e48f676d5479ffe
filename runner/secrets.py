"""Credentials stay out of every file the runner writes.

Two kinds of secret are recognised: values of credential-looking environment
variables (``WANDB_API_KEY``, ``HF_TOKEN``, ``*_TOKEN``, ``*_KEY``, ...), which
are replaced wherever they appear in a string, for example inside an error
message or a path built with ``${oc.env:MY_SECRET_TOKEN}``; and values under
credential-looking keys (``api_key``, ``hub_password``, ...) of a config or of
``key=value`` overrides. :func:`scrub_text` is applied by
:func:`runner.atomic_io.atomic_write_text` (every record, summary and config the
runner writes) and by the log filter :func:`install_log_filter`.
"""

from __future__ import annotations

import logging
import os
import re

from runner.preflight.errors import ConfigError

MASK = "***"
# a key naming a credential; "token" but not "tokens" or "tokeniser/tokenizer", so that settings such as
# safe.max_tokens, a tokenizer or train_tokens_per_s keep their values in every file the runner writes
# (hf_token, hubToken, api_token, token still mask; so do pad_token_id or eos_token, should a config hold them)
_CREDENTIAL = r"api[_-]?key|token(?!s|i[sz])|secret|password|passwd|credential"
SECRET_KEY_RE = re.compile(rf"({_CREDENTIAL})", re.I)
SECRET_ENV_RE = re.compile(r"(WANDB_API_KEY|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|_TOKEN$|_KEY$|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
# key=value pairs inside a string (an override, Hydra's comma-joined override_dirname)
SECRET_OVERRIDE_RE = re.compile(rf"([\w.+~/-]*(?:{_CREDENTIAL})[\w.-]*)=([^,\s]+)", re.I)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary text
SWEEP_ENV_PREFIX = "RUNNER_SECRET_"  # runner.sweep hands a credential override to its jobs in this variable
_REMEMBERED: set[str] = set()  # credential values given as overrides to this process (remember_overrides)


def secret_values() -> list[str]:
    """Values of credential-looking environment variables and of credential overrides this process was
    given, longest first (a value inside another is masked whole)."""
    values = {v for k, v in os.environ.items() if SECRET_ENV_RE.search(k) and v and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values | _REMEMBERED, key=len, reverse=True)


def is_credential_key(key: str) -> bool:
    """Whether a config key (dotted, or an override's with ``+``/``~``) names a credential, by its last part."""
    return bool(SECRET_KEY_RE.search(key.lstrip("+~").rsplit(".", 1)[-1]))


def _secret_override(arg: str) -> tuple[str, str] | None:
    """(key, value) of a ``key=value`` override whose key looks like a credential's, else None."""
    if "=" not in arg or arg.startswith("-"):
        return None
    key, value = arg.split("=", 1)
    return (key, value) if is_credential_key(key) else None


def remember_overrides(args: list[str]) -> None:
    """Credential values given as overrides (``+logger.api_key=...``) become known secrets of this process:
    masked wherever they appear, in logs and error messages too."""
    for arg in args:
        found = _secret_override(arg)
        if found and len(found[1]) >= MIN_SECRET_LENGTH and not found[1].startswith("${"):
            _REMEMBERED.add(found[1])


def sweep_variable(key: str) -> str:
    """The environment variable a sweep's jobs read the credential override ``key`` from."""
    return SWEEP_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", key.lstrip("+~")).strip("_").upper()


def overrides_through_environment(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """A sweep's overrides with every credential value moved to an environment variable: ``key=VALUE``
    becomes ``key=${oc.env:RUNNER_SECRET_KEY}`` and ``{RUNNER_SECRET_KEY: VALUE}`` is returned, so no
    file the sweep writes, and no job's command line, holds it. A masked value (``***``, from a Hydra
    multirun.yaml the runner cleaned) is read from the same variable. A swept credential is refused."""
    out, env = [], {}
    for arg in args:
        found = _secret_override(arg)
        if found is None or found[1].startswith("${"):
            out.append(arg)
            continue
        key, value = found
        if "," in value:
            raise ConfigError(f"{key} is a credential: give one value, not a sweep")
        variable = sweep_variable(key)
        if value != MASK:
            env[variable] = value
        out.append(f"{key}=${{oc.env:{variable}}}")
    return out, env


def missing_sweep_variables(args: list[str]) -> list[str]:
    """The RUNNER_SECRET_* variables a sweep's overrides read that the environment lacks."""
    wanted = {m for a in args for m in re.findall(r"\$\{oc\.env:(" + SWEEP_ENV_PREFIX + r"\w+)\}", a)}
    return sorted(v for v in wanted if not os.environ.get(v))


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every known secret value masked."""
    for s in secret_values() if secrets is None else secrets:
        if s in text:
            text = text.replace(s, MASK)
    return text


def scrub(obj, secrets: list[str] | None = None, overrides: bool = False):
    """Replace credential-looking keys' values and any known secret value with '***'; with
    ``overrides``, also the values of credential-looking ``key=value`` pairs inside strings."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: MASK if SECRET_KEY_RE.search(str(k)) and v not in (None, "") else scrub(v, secrets, overrides)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, secrets, overrides) for v in obj]
    if isinstance(obj, str):
        if overrides:
            obj = SECRET_OVERRIDE_RE.sub(lambda m: f"{m.group(1)}={MASK}", obj)
        return scrub_text(obj, secrets)
    return obj


class ScrubFilter(logging.Filter):
    """Masks secrets in a log record's message and traceback before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if not secrets:
            return True
        message = record.getMessage()
        record.msg, record.args = scrub_text(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text, secrets)
        return True


def install_log_filter() -> None:
    """Every handler of the root logger (Hydra's job log file and console) masks secrets."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
