"""A run dir's state, in one place: who holds it, what it holds, what its record says, and what
survives a failed attempt. Training, pruning, a job in a sweep and the sweep itself read and write
run dirs only through this module.

* lock: :class:`DirLock`; what counts as a trace of a run: :func:`traces`;
* what a rerun must do: :func:`state`; the record itself is written and read by :mod:`runner.results`,
  the files are named in :mod:`runner.run_files`;
* trimming what a resume redoes: :func:`trim_metrics`;
* retiring what an earlier attempt left: :func:`retire_traces` (inside the dir),
  :func:`retire_dir` (the whole dir, beside the others of a sweep).

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

import fcntl
import json
import os
from pathlib import Path

import yaml

from runner.atomic_io import atomic_write_text
from runner.preflight.errors import ConfigError
from runner.preflight.schema import default_of, upgrade_saved
from runner.results import STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, parse_record
from runner.run_files import CHECKPOINT_SLOTS, CONFIG, HYDRA_OWN, LOCK_FILE, RETIRED
from runner.secrets import MASK, is_credential_key

# Settings that may differ between an interrupted attempt and its resume: how
# it is run, checked and shown, not what it computes.
MAY_CHANGE_ON_RESUME = (
    "resume", "resume_accept_changes", "debug", "verbose", "output_dir", "data_cache_dir", "trainer.progress_bar", "logger.mode", "logger.group",
    "logger.tags", "trainer.num_workers", "method.checks",
)


class DirLock:
    """An exclusive, process-lifetime lock on a run or sweep dir (no-op on ranks other than 0)."""

    def __init__(self, directory: Path, what: str = "run", setting: str | None = None):
        self.directory = Path(directory)
        self.what = what
        self.setting = setting or ("hydra.run.dir" if what == "run" else "--dir")  # where the user picks another dir
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
                f"or choose another {self.setting}"
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


def live_holder(directory: Path) -> str | None:
    """The pid of the live process holding ``directory``'s :class:`DirLock` (the kernel drops the lock when
    its process dies), or None; probes without taking the lock or creating anything."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused only while someone holds it exclusively
        except OSError:
            return os.read(fd, 64).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
    """A nested config as ``{"dotted.key": value}`` (lists stay values)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def changed_settings(saved: dict, now: dict, allowed=MAY_CHANGE_ON_RESUME) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (allowed keys and their children skipped).
    A setting the saved run predates (added to the runner since) is no change while it keeps its default; nor is
    one an older runner masked as if it were a credential (safe.max_tokens): its value was not kept."""
    a, b = _flat(upgrade_saved(saved)), _flat(now)

    def skip(key: str) -> bool:
        if key not in a and key in b and b[key] == default_of(key):
            return True
        if a.get(key) == MASK and not is_credential_key(key):
            return True
        return any(key == k or key.startswith(k + ".") for k in allowed)

    return sorted(k for k in set(a) | set(b) if not skip(k) and a.get(k, "<missing>") != b.get(k, "<missing>"))


def describe_changes(saved: dict, now: dict, changed: list[str], most: int) -> str:
    """The first ``most`` of ``changed`` (dotted keys) as ``key (old -> new)``, then ``...`` if there are more."""
    before, after = _flat(saved), _flat(now)
    shown = ", ".join(f"{k} ({before.get(k, '<missing>')!r} -> {after.get(k, '<missing>')!r})" for k in changed[:most])
    return shown + (", ..." if len(changed) > most else "")


def settings_changes(directory: Path, now: dict, most: int = 4) -> str | None:
    """How the settings saved in ``directory``'s config.yaml differ from ``now`` (the first ``most`` keys, as
    :func:`describe_changes` says them); None when they agree or nothing is saved. An unreadable file is refused."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}); it is not the record of a run") from exc
    changed = changed_settings(saved, now)
    return describe_changes(saved, now, changed, most) if changed else None


def check_same_settings(directory: Path, now: dict) -> None:
    """Resume only with the settings the interrupted attempt ran with."""
    changes = settings_changes(directory, now)
    if changes:
        raise ConfigError(
            f"resume=true with other settings than the interrupted run: {changes}; "
            f"resume with the same overrides, or start a new run in another hydra.run.dir"
        )


FINGERPRINT_WORDS = {"weights": "the base model's weights", "data": "the data as read", "world_size": "the number of processes",
                     "effective_batch": "the effective batch (batch_size x grad_accum_steps x processes)"}


def check_same_experiment(saved: dict | None, now: dict, accept: bool) -> list[str]:
    """A resume continues the experiment its checkpoint belongs to: ``saved`` (the checkpoint's fingerprints; None
    for checkpoints made before they were recorded) against ``now``. Refuses in one line naming what changed,
    unless ``accept`` (``resume_accept_changes=true``); returns the changes accepted."""
    if not saved:
        return []
    changed = [k for k in FINGERPRINT_WORDS if k in saved and k in now and saved[k] != now[k]]
    if changed and not accept:
        what = "; ".join(f"{FINGERPRINT_WORDS[k]} ({saved[k]} -> {now[k]})" if k in ("world_size", "effective_batch")
                         else FINGERPRINT_WORDS[k] for k in changed)
        raise ConfigError(f"resume=true but since the checkpoint {what} changed: the numbers would not be this run's; "
                          f"restore them, start a new run in another hydra.run.dir, or add resume_accept_changes=true")
    return changed


def trim_metrics(path: Path, last_step: int) -> int:
    """Drop the ``metrics.jsonl`` records after ``last_step`` (logged after the checkpoint a resume
    continues from); returns how many were dropped. Unreadable lines are dropped too."""
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


# what a rerun of a dir must do (state)
COMPLETED, FAILED, INTERRUPTED, RESUMABLE, INCOMPLETE, MISSING, DAMAGED = (
    "completed", "failed", "interrupted", "resumable", "incomplete", "missing", "damaged")



def newest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint (meta.json written last) with the highest step among the slots, wherever a
    killed save left it; ties go to ``checkpoint/``. A meta.json that cannot be read counts as oldest."""
    found = []
    for order, name in enumerate(CHECKPOINT_SLOTS):
        meta = Path(run_dir) / name / "meta.json"
        if not meta.is_file():
            continue
        try:
            step = int(json.loads(meta.read_text()).get("global_step", -1))
        except (OSError, ValueError, TypeError, AttributeError):
            step = -2
        found.append((step, -order, meta.parent))
    return max(found)[2] if found else None


def has_checkpoint(run_dir: Path) -> bool:
    return newest_checkpoint(run_dir) is not None


def state(run_dir: Path) -> str:
    """completed | failed | interrupted (with a checkpoint) | resumable (killed hard, checkpoint left)
    | incomplete (a dir but nothing to resume from) | missing (never started) | damaged (an unreadable
    record: never rerun over)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return MISSING
    record, problem = parse_record(run_dir)  # read once
    if problem:
        return DAMAGED
    status = (record or {}).get("status")
    if status == STATUS_COMPLETED:
        return COMPLETED
    if status == STATUS_FAILED:
        return FAILED
    if status == STATUS_INTERRUPTED:
        return INTERRUPTED if has_checkpoint(run_dir) else INCOMPLETE
    return RESUMABLE if has_checkpoint(run_dir) else INCOMPLETE


# --------------------------------------------------------------------------- retiring


def _first_free(name) -> Path:
    """``name(n)`` for the smallest n >= 1 that does not exist yet."""
    n = 1
    while name(n).exists():
        n += 1
    return name(n)


def retire_traces(directory: Path, names: list[str] | None = None) -> Path:
    """Move every trace of an earlier attempt (:func:`traces`; only ``names`` among them, if given) to
    ``<dir>/.retired/<n>/``: kept, never deleted."""
    directory = Path(directory)
    target = _first_free(lambda n: directory / RETIRED / str(n))
    target.mkdir(parents=True)
    for name in traces(directory):
        if names is None or name in names:
            (directory / name).rename(target / name)
    return target


def retire_dir(run_dir: Path) -> Path:
    """Move a whole run dir to ``<parent>/.retired/<name>.<n>`` (a sweep's job; aggregation skips it)."""
    run_dir = Path(run_dir)
    root = run_dir.parent / RETIRED
    root.mkdir(exist_ok=True)
    target = _first_free(lambda n: root / f"{run_dir.name}.{n}")
    run_dir.rename(target)
    return target
