"""A run dir's record: who owns it, what it already holds, and what survives a failed attempt.

Guarantees (README, "When things go wrong"):

* **One run per dir at a time.** :class:`DirLock` takes an exclusive
  ``fcntl`` lock on ``<dir>/.lock`` (the same for a sweep dir). The kernel
  drops it when the process dies, so a stale lock file never blocks; a second
  comer gets one line and exit 2.
* **A dir that holds any trace of a run is taken.** Not only a finished
  ``results.json``: metrics, steps, a checkpoint (or a half-swapped one), a
  saved model, W&B files. Only Hydra's own files (``.hydra/``, ``*.log``)
  and the lock do not count. A new run there needs ``resume=true`` or
  another dir.
* **Resume continues the same run.** The saved ``config.yaml`` and the new
  config must agree on every key but those meant to change between attempts
  (:data:`MAY_CHANGE_ON_RESUME`); otherwise one line names the keys.
* **A failed attempt never destroys the previous record**:
  :func:`keep_previous_record` adds the attempt to it instead.
"""

from __future__ import annotations

import datetime
import fcntl
import os
from pathlib import Path

from runner.errors import ConfigError
from runner.results import atomic_write_json

LOCK_FILE = ".lock"
RETIRED = ".retired"  # earlier attempts moved aside (runner.jobs.resolve_auto_resume)
HYDRA_OWN = {".hydra", LOCK_FILE, RETIRED}
# Settings that may differ between an interrupted attempt and its resume: how
# it is run and shown, not what it computes.
MAY_CHANGE_ON_RESUME = (
    "resume", "debug", "verbose", "output_dir", "data_cache_dir", "trainer.progress_bar", "logger.mode", "logger.group",
    "logger.tags", "trainer.num_workers",
)


class DirLock:
    """An exclusive, process-lifetime lock on a run or sweep dir (no-op on ranks other than 0)."""

    def __init__(self, directory: Path, what: str = "run"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        if int(os.environ.get("RANK", "0")) != 0 or self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{self.directory} is in use by another {self.what} (pid {holder}); wait for it to finish "
                f"or choose another {'hydra.run.dir' if self.what == 'run' else '--dir'}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def traces(directory: Path) -> list[str]:
    """What in ``directory`` shows that a run used it (sorted names; Hydra's own files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in HYDRA_OWN and p.suffix != ".log")


def check_fresh(directory: Path) -> None:
    """A new (not resumed) run may only start in a dir without traces of another run."""
    found = traces(directory)
    if found:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise ConfigError(
            f"{directory} already holds a run ({shown}); use resume=true to continue it, or another hydra.run.dir"
        )


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def changed_settings(saved: dict, now: dict, allowed=MAY_CHANGE_ON_RESUME) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (allowed keys and their children skipped)."""
    a, b = _flat(saved), _flat(now)

    def skip(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in allowed)

    return sorted(k for k in set(a) | set(b) if not skip(k) and a.get(k, "<missing>") != b.get(k, "<missing>"))


def check_same_settings(directory: Path, now: dict) -> None:
    """Resume only with the settings the interrupted attempt ran with."""
    import yaml

    path = Path(directory) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}); it is not the record of a run") from exc
    changed = changed_settings(saved, now)
    if changed:
        before, after = _flat(saved), _flat(now)
        shown = ", ".join(f"{k} ({before.get(k, '<missing>')!r} -> {after.get(k, '<missing>')!r})" for k in changed[:4])
        raise ConfigError(
            f"resume=true with other settings than the interrupted run: {shown}{', ...' if len(changed) > 4 else ''}; "
            f"resume with the same overrides, or start a new run in another hydra.run.dir"
        )


def keep_previous_record(directory: Path, previous: dict, status: str, error: str, step: int) -> None:
    """Add a failed attempt to the dir's existing record (``previous``, as read) instead of replacing it."""
    attempts = list(previous.get("attempts") or [])
    attempts.append({"status": status, "error": error, "step": step,
                     "at": datetime.datetime.now().isoformat(timespec="seconds")})
    atomic_write_json(Path(directory) / "results.json", {**previous, "attempts": attempts})


def trim_metrics(path: Path, last_step: int) -> int:
    """Drop the ``metrics.jsonl`` records after ``last_step`` (logged after the checkpoint a resume
    continues from); returns how many were dropped. Unreadable lines are dropped too."""
    import json

    from runner.results import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if int(record.get("global_step", 0)) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped
