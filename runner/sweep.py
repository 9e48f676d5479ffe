"""Sweeps whose jobs each run as their own process group, and resuming a sweep dir.

Hydra's multirun (``python -m runner -m ...``) runs every job in one process,
which is right for one device per job. A job that needs several processes
(``accelerate launch``/torchrun) cannot run inside a sweep (every rank would run
the whole sweep), so this module runs the sweep *outside* and starts each job
as its own launcher process::

    python -m runner.sweep --procs 4 -- task=glue/mrpc,glue/rte method=adapter seed=1,2,3
    python -m runner.sweep --procs 2 --cpu -- task=glue/mrpc seed=1,2      # 2 CPU processes per job
    python -m runner.sweep --resume outputs/multiruns/<stamp>               # continue a sweep (ours or Hydra's)

The grid uses Hydra's own expansion (``BasicSweeper.split_arguments``), so job
``i`` is the same job ``python -m runner -m <same overrides>`` would number
``i``; job dirs are ``<sweep dir>/<i>_<run_name>`` as in a Hydra multirun.
Each job writes its usual run dir (``hydra.run.dir``), logs to
``<sweep dir>/logs/<i>_<run_name>.log``, and the sweep ends with
``sweep_summary.json``/``sweep_summary.md``. The W&B runs of a sweep share one
group: the sweep dir's name.

``--resume DIR`` skips completed jobs, resumes interrupted ones from their last
checkpoint (``resume=true``), reruns jobs that left nothing usable (their old
dir is kept under ``DIR/.retired/``), runs jobs never started, and lists failed
jobs (rerun with ``--retry-failed``). The manifest keeps each job's config as its
overrides composed when the sweep was planned (unresolved); a resume composes
them again and refuses (exit 2) when a job that already ran would now get other
settings (a changed config group or default: its results would no longer be
what the overrides say), unless ``--allow-changed-settings``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from runner import run_clock, runs
from runner.atomic_io import atomic_write_json, atomic_write_text
from runner.preflight.config import compose_config, dir_name, register_config
from runner.preflight.errors import ConfigError
from runner.preflight.schema import upgrade_overrides
from runner.results import STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, read_record, record_problem, write_failure
from runner.runs import COMPLETED, DAMAGED, FAILED, INTERRUPTED, MISSING, RESUMABLE
from runner.secrets import missing_sweep_variables, overrides_through_environment, remember_overrides, scrub

MANIFEST = "sweep.json"
SETTINGS = "settings"  # manifest key: {job name: its config as composed when the sweep was planned}
SUMMARY = "sweep_summary"


@dataclass
class Job:
    num: int
    name: str  # "<num>_<run_name>"
    overrides: list[str]
    dir: str = ""
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------- the grid


def expand(overrides: list[str]) -> list[list[str]]:
    """Every combination of the comma lists, in the order Hydra's basic sweeper numbers them (job
    ``i`` here is job ``i`` of ``python -m runner -m``): one list per key, a later override of a key
    replacing an earlier one, their product in key order. Only Hydra's public override parser is used."""
    per_key: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(f"a grid sweep takes comma lists, choice() or range(); not {override.input_line}")
            per_key[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            per_key[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(combo) for combo in itertools.product(*per_key.values())]


def _is_hydra_override(item: str) -> bool:
    key = item.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def run_name(overrides: list[str]) -> str | None:
    """The job's ``run_name`` as the runner would compute it (None if the overrides do not compose)."""
    try:
        cfg = compose_config([o for o in overrides if not _is_hydra_override(o)])
        return str(cfg.run_name)
    except Exception:  # noqa: BLE001 (the job itself will report why, with its exit code)
        return None


def _uses_wandb(settings: dict | None) -> bool:
    """Whether a job's composed settings (:func:`composed_settings`) log to W&B."""
    return ((settings or {}).get("logger") or {}).get("name") == "wandb"


def plan(sweep_dir: Path, overrides: list[str]) -> list[Job]:
    jobs = []
    for num, job_overrides in enumerate(expand(overrides)):
        name = f"{num}_{_job_label(job_overrides)}"
        jobs.append(Job(num, name, job_overrides, str(Path(sweep_dir) / name)))
    return jobs


def _job_label(overrides: list[str]) -> str:
    """``run_name``; for a job that prunes a saved run, ``prune-<that run's dir name>`` (its task and seed come from there)."""
    source = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "prune.from_run"), None)
    if source not in (None, "", "null"):
        return dir_name(f"prune-{Path(source).name}")
    return dir_name(run_name(overrides) or "job")  # one path component inside the sweep dir, whatever the values


def load_plan(sweep_dir: Path) -> tuple[list[Job], dict]:
    """The jobs of an existing sweep dir: ours (``sweep.json``) or a Hydra multirun (``multirun.yaml``)."""
    sweep_dir = Path(sweep_dir)
    manifest = sweep_dir / MANIFEST
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        # a job's dir is <sweep dir>/<name> wherever the sweep dir is now and whatever the cwd (manifests
        # written before this stored it relative to the cwd of the sweep that planned it)
        return [Job(**{**j, "overrides": upgrade_overrides(j["overrides"]), "dir": str(sweep_dir / j["name"])})
                for j in data["jobs"]], data.get("options", {})
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        raise SystemExit(f"error: {sweep_dir} holds neither {MANIFEST} nor multirun.yaml; not a sweep dir")

    conf = OmegaConf.load(multirun)
    sweeper = str(OmegaConf.select(conf, "hydra.sweeper._target_") or "")
    if not sweeper.endswith("BasicSweeper"):
        raise SystemExit(f"error: {sweep_dir} was made by {sweeper}, not a grid; only grid sweeps can be resumed job by job")
    params = OmegaConf.select(conf, "hydra.sweeper.params") or {}
    overrides = upgrade_overrides([f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(conf, "hydra.overrides.task") or []))
    existing = {p.name.split("_", 1)[0]: p for p in sweep_dir.iterdir() if p.is_dir() and "_" in p.name}
    jobs = []
    for num, job_overrides in enumerate(expand(overrides)):
        found = existing.get(str(num))
        name = found.name if found else f"{num}_{_job_label(job_overrides)}"
        jobs.append(Job(num, name, job_overrides, str(sweep_dir / name)))
    return jobs, {}


# ------------------------------------------------------------------ job states


def jobs_to_run(jobs: list[Job], retry_failed: bool = False) -> list[tuple[Job, bool]]:
    """(job, resume?) for every job that still has to run: completed ones are skipped, failed ones too unless retried."""
    todo = []
    for job in jobs:
        state = runs.state(Path(job.dir))
        if state == COMPLETED:
            continue
        if state == DAMAGED:
            print(f"sweep: {job.name}: skipped: {record_problem(Path(job.dir))}", file=sys.stderr)
            continue
        if state == FAILED and not retry_failed:
            print(f"sweep: {job.name}: failed before; skipped (--retry-failed reruns it)", file=sys.stderr)
            continue
        todo.append((job, state in (INTERRUPTED, RESUMABLE)))
    return todo


def composed_settings(overrides: list[str]) -> dict | None:
    """The config ``overrides`` compose to now, interpolations unresolved (so the environment does not
    enter it); None when they do not compose (that job then fails on its own, with its own record)."""
    try:
        return OmegaConf.to_container(compose_config([o for o in overrides if not _is_hydra_override(o)]), resolve=False)
    except Exception:  # noqa: BLE001
        return None


def job_settings(jobs: list[Job], stored: dict) -> tuple[dict, list[str]]:
    """Each job's settings to keep in the manifest (as stored for a job that already ran, as composed
    now for one that has not), and a line per job that ran but whose overrides compose to other
    settings now (the config groups or defaults changed since)."""
    kept, stale = {}, []
    for job in jobs:
        now, before = composed_settings(job.overrides), stored.get(job.name)
        if before is None or runs.state(Path(job.dir)) == MISSING:
            kept[job.name] = now
            continue
        kept[job.name] = before
        if now is None:
            stale.append(f"{job.name}: its overrides no longer compose (`python -m runner {shlex.join(job.overrides)}` says why)")
            continue
        changed = runs.changed_settings(before, now)
        if changed:
            stale.append(f"{job.name}: {runs.describe_changes(before, now, changed, 3)}")
    return kept, stale


def _stale_error(sweep_dir: Path, stale: list[str]) -> str:
    return (f"{sweep_dir}: {len(stale)} job(s) that already ran would now run with other settings "
            f"(configs or defaults changed since the sweep was planned): {stale[0]}{'; ...' if len(stale) > 1 else ''}; "
            f"remove those job dirs to rerun them as the overrides compose now, or pass --allow-changed-settings "
            f"to keep their results as they are")


# ------------------------------------------------------------------ summaries


def summarize(sweep_dir: Path, jobs: list[Job] | None = None) -> list[dict]:
    """One row per job: state, main metric, error; written to ``sweep_summary.json`` and ``.md``."""
    sweep_dir = Path(sweep_dir)
    if jobs is None:
        jobs, _ = load_plan(sweep_dir)
    rows = []
    for job in jobs:
        results = read_record(Path(job.dir)) or {}
        metric_name = results.get("main_metric")
        rows.append({
            "num": job.num, "name": job.name, "state": runs.state(Path(job.dir)),
            "metric": metric_name, "value": (results.get("metrics") or {}).get(metric_name) if metric_name else None,
            "error": record_problem(Path(job.dir)) or results.get("error"), "dir": str(Path(job.dir).relative_to(sweep_dir)) if Path(job.dir).is_relative_to(sweep_dir) else job.dir,
            "overrides": job.overrides,
        })
    atomic_write_json(sweep_dir / f"{SUMMARY}.json", {"sweep_dir": str(sweep_dir), "jobs": rows,
                                                      "counts": _counts(rows)})
    atomic_write_text(sweep_dir / f"{SUMMARY}.md", summary_markdown(rows))
    return rows


def _counts(rows: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return counts


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| job | state | metric | error |", "|---|---|---|---|"]
    for r in rows:
        value = f"{r['metric']}={r['value']:.4f}" if isinstance(r["value"], (int, float)) else ""
        error = (r["error"] or "").replace("|", "\\|").splitlines()[0][:160] if r["error"] else ""
        lines.append(f"| {r['name']} | {r['state']} | {value} | {error} |")
    counts = ", ".join(f"{v} {k}" for k, v in _counts(rows).items())
    return "\n".join(lines) + f"\n\n{len(rows)} jobs: {counts}\n"


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


# The last multirun's job counts in this process (python -m runner -m exits 1 unless every job completed,
# as runner.sweep does).
LAST_MULTIRUN: dict = {}


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): a multirun holds its sweep dir's lock, as ``runner.sweep``
    does (one owner per sweep dir); at its end, write and print the job table."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            self._lock = runs.DirLock(Path(config.hydra.sweep.dir), "sweep", "hydra.sweep.dir").acquire()  # held until the process exits
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs, _ = load_plan(sweep_dir)
        except SystemExit:  # not a grid (e.g. Optuna): summarize the job dirs that exist
            dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and "_" in p.name and p.name.split("_")[0].isdigit()),
                          key=lambda p: int(p.name.split("_")[0]))
            jobs = [Job(int(p.name.split("_")[0]), p.name, [], str(p)) for p in dirs]
        rows = summarize(sweep_dir, jobs)
        print(f"\nsweep {sweep_dir}:\n" + summary_markdown(rows) + f"\nsummary: {sweep_dir / SUMMARY}.md (and .json)",
              file=sys.stderr)
        LAST_MULTIRUN.update(jobs=len(rows), completed=sum(r["state"] == COMPLETED for r in rows), dir=str(sweep_dir))


# ------------------------------------------------------------------ launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_for(procs: int, cpu: bool, launcher: str) -> str:
    if launcher != "auto":
        return launcher
    if procs <= 1:
        return "python"
    # accelerate's --cpu launcher starts one process and does not forward SIGTERM; torchrun does both
    return "torchrun" if cpu else "accelerate"


def build_command(job: Job, *, procs: int = 1, cpu: bool = False, launcher: str = "auto", launch_args: list[str] | None = None,
                  resume: bool = False, group: str | None = None) -> list[str]:
    """The command that runs one job as its own process (group)."""
    args = list(job.overrides)
    if cpu and not any(a.startswith("trainer.cpu=") for a in args):
        args.append("trainer.cpu=true")
    if group and not any(a.startswith("logger.group=") for a in args):
        args.append(f"logger.group={group}")
    if resume:
        args.append("resume=true")
    args.append(f"hydra.run.dir={job.dir}")
    kind = launcher_for(procs, cpu, launcher)
    py = sys.executable
    if kind == "python":
        return [py, "-m", "runner", *args]
    if kind == "torchrun":
        return [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *(launch_args or []),
                "-m", "runner", *args]
    if kind == "accelerate":
        head = [py, "-m", "accelerate.commands.launch", "--num_processes", str(procs)]
        if cpu:
            head.append("--cpu")
        elif procs > 1:
            head.append("--multi_gpu")
        if procs > 1:  # a port of its own: two sweeps (or a sweep's parallel jobs) on one machine never collide on 29500
            head += ["--main_process_port", str(_free_port())]
        return [*head, *(launch_args or []), "-m", "runner", *args]
    raise SystemExit(f"error: unknown launcher {kind!r}; valid: auto, python, torchrun, accelerate")


def _last_error_line(log_path: Path) -> str | None:
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1][:500] if lines else None


def record_launch_failure(job: Job, returncode: int, log_path: Path) -> None:
    """A job that exited without results.json (bad input, a crash at start, killed) gets a failure record."""
    job_dir = Path(job.dir)
    if read_record(job_dir) is not None:
        return
    job_dir.mkdir(parents=True, exist_ok=True)
    # killed (SIGKILL after the grace period, or by hand) or stopped by a signal: interrupted, so that --resume
    # reruns it; a job that exits non-zero by itself failed
    killed = returncode < 0 or returncode - 128 in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    write_failure(job_dir, STATUS_INTERRUPTED if killed else STATUS_FAILED,
                       _last_error_line(log_path) or f"exit code {returncode}",
                       stage="killed" if killed else "before_training" if returncode != 0 else "no_results",
                       who={"run_name": job.name.split("_", 1)[1]}, exit_code=returncode,
                       job={"num": job.num, "overrides": job.overrides}, log=str(log_path))


class JobLauncher:
    """Runs jobs K at a time, each in its own session; forwards SIGINT/SIGTERM so jobs checkpoint and stop."""

    def __init__(self, sweep_dir: Path, *, procs: int, cpu: bool, launcher: str, launch_args: list[str], parallel: int,
                 devices: list[str] | None, grace_s: float, group: str | None):
        self.sweep_dir = Path(sweep_dir)
        self.opts = dict(procs=procs, cpu=cpu, launcher=launcher, launch_args=launch_args, group=group)
        self.parallel = max(1, parallel)
        self.slots = self._device_slots(devices, procs)
        self.grace_s = grace_s
        self.running: dict[int, tuple[subprocess.Popen, Job, float, int]] = {}
        self.stop_signal: int | None = None
        self.stop_time = 0.0

    def _device_slots(self, devices: list[str] | None, procs: int) -> list[str | None]:
        if not devices:
            return [None] * self.parallel
        per_job = max(1, procs)
        slots = [",".join(devices[i:i + per_job]) for i in range(0, len(devices) - per_job + 1, per_job)]
        if len(slots) < self.parallel:
            raise SystemExit(f"error: {len(devices)} devices give {len(slots)} slots of {per_job}; --parallel {self.parallel} needs more")
        return slots[:self.parallel]

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # second signal: stop now
            for proc, *_ in self.running.values():
                _kill_group(proc, signal.SIGKILL)
            return
        self.stop_signal, self.stop_time = signum, time.monotonic()
        print(f"sweep: {signal.Signals(signum).name}: asking {len(self.running)} running job(s) to checkpoint and stop; "
              "no new jobs start", file=sys.stderr)
        for proc, *_ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the launcher (torchrun/accelerate) forwards it to every rank

    def _pass_on(self, sig: int) -> None:
        """SIGTSTP or SIGCONT to every running job's process group: each job is a session of its own, so a
        terminal's Ctrl-Z and fg reach only the sweep; a run then pauses itself, its pause left out of its times
        (runner.run_clock)."""
        for proc, *_ in self.running.values():
            if proc.poll() is None:
                _kill_group(proc, sig)

    def run(self, todo: list[tuple[Job, bool]]) -> int:
        (self.sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        free = list(range(len(self.slots)))
        queue = list(todo)
        try:
            with run_clock.counting_pauses(on_pause=lambda: self._pass_on(signal.SIGTSTP),
                                           on_continue=lambda: self._pass_on(signal.SIGCONT)):
                while queue or self.running:
                    while queue and free and self.stop_signal is None:
                        job, resume = queue.pop(0)
                        self._start(job, resume, free.pop(0))
                    time.sleep(0.2)
                    for num, (proc, job, t0, slot) in list(self.running.items()):
                        if proc.poll() is None:
                            if self.stop_signal is not None and time.monotonic() - self.stop_time > self.grace_s:
                                _kill_group(proc, signal.SIGKILL)  # did not checkpoint in time
                            continue
                        del self.running[num]
                        free.append(slot)
                        self._finished(job, proc.returncode, run_clock.now() - t0)
                    if self.stop_signal is not None and not self.running:
                        break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for proc, *_ in self.running.values():  # only after an error in this loop: leave no job behind
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        return 128 + self.stop_signal if self.stop_signal else 0

    def _start(self, job: Job, resume: bool, slot: int) -> None:
        cmd = build_command(job, resume=resume, **self.opts)
        env = dict(os.environ)
        if self.slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slots[slot]
        log_path = self.sweep_dir / "logs" / f"{job.name}.log"
        with open(log_path, "a") as log:
            log.write(f"\n$ {shlex.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_stop_with_the_sweep)
        self.running[job.num] = (proc, job, run_clock.now(), slot)
        what = "resuming" if resume else "starting"
        print(f"sweep: {what} {job.name}" + (f" on devices {self.slots[slot]}" if self.slots[slot] else ""), file=sys.stderr)

    def _finished(self, job: Job, returncode: int, seconds: float) -> None:
        log_path = self.sweep_dir / "logs" / f"{job.name}.log"
        if returncode != 0 or read_record(Path(job.dir)) is None:
            record_launch_failure(job, returncode, log_path)
        state = runs.state(Path(job.dir))
        results = read_record(Path(job.dir)) or {}
        metric = results.get("main_metric")
        value = (results.get("metrics") or {}).get(metric) if metric else None
        detail = f"{metric}={value:.4f}" if isinstance(value, (int, float)) else (results.get("error") or "")[:200]
        print(f"sweep: {job.name}: {state} (exit {returncode}, {seconds:.0f} s) {detail}", file=sys.stderr)


def _stop_with_the_sweep() -> None:
    """In a job's process, before it runs the job (Linux): SIGTERM when the sweep process dies, even by
    SIGKILL, so a job never trains on unseen after its sweep is gone; it checkpoints and stops as on any
    SIGTERM, and the next --resume continues it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lock check of --resume still protects the job's dir
        pass


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.sweep",
        description="Run a grid of runner jobs, each as its own process group (several processes per job possible).",
        epilog="example: python -m runner.sweep --procs 2 -- task=glue/mrpc,glue/rte method=adapter seed=1,2,3")
    p.add_argument("overrides", nargs="*", help="Hydra overrides; comma lists are swept (same syntax as -m)")
    p.add_argument("--procs", type=int, default=None, help="processes per job (default 1)")
    p.add_argument("--cpu", action="store_true", default=None, help="CPU processes (sets trainer.cpu=true)")
    p.add_argument("--launcher", choices=("auto", "python", "torchrun", "accelerate"), default=None,
                   help="auto: python for 1 process, torchrun on CPU, accelerate launch --multi_gpu on GPUs")
    p.add_argument("--launch-args", default=None, help="extra launcher arguments, e.g. \"--config_file fsdp.yaml\"")
    p.add_argument("--parallel", type=int, default=None, help="jobs at a time (default 1)")
    p.add_argument("--devices", default=None, help="GPU ids to split among parallel jobs, e.g. 0,1,2,3")
    p.add_argument("--dir", type=Path, default=None, help="sweep dir (default outputs/multiruns/<stamp>)")
    p.add_argument("--resume", type=Path, default=None, metavar="SWEEP_DIR",
                   help="continue a sweep dir: skip completed, resume interrupted, run the rest")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: rerun failed jobs too")
    p.add_argument("--allow-changed-settings", action="store_true",
                   help="with --resume: continue although jobs that already ran would now compose to other settings")
    p.add_argument("--grace", type=float, default=300.0, help="seconds a signalled job gets to checkpoint before SIGKILL")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    p.add_argument("--completed", type=Path, default=None, metavar="SWEEP_DIR",
                   help="print the completed job dirs of SWEEP_DIR as one comma list (a sweep value for "
                        "prune.from_run) and exit; filter with --method")
    p.add_argument("--method", default=None, help="with --completed: only runs of this method (results.json 'method')")
    return p


def completed_runs(sweep_dir: Path, method: str | None = None) -> list[Path]:
    """Job dirs of a sweep whose results.json says completed (and, if given, whose method matches), in job order."""
    jobs, _ = load_plan(sweep_dir)
    out = []
    for job in jobs:
        results = read_record(Path(job.dir)) or {}
        if results.get("status") == STATUS_COMPLETED and (method is None or results.get("method") == method):
            out.append(Path(job.dir))
    return out


def _plan_and_options(args) -> tuple[Path, list[Job], dict]:
    """The sweep dir, its jobs (a new grid, or those of the dir being resumed) and the launch options
    (given now, else as stored with the sweep)."""
    if args.resume is not None:
        sweep_dir = args.resume
        jobs, stored = load_plan(sweep_dir)
        if args.overrides:
            raise SystemExit("error: --resume takes the jobs from the sweep dir; give no overrides")
    else:
        if not args.overrides:
            raise SystemExit("error: no overrides; e.g. python -m runner.sweep -- task=glue/mrpc,glue/rte seed=1,2")
        sweep_dir = args.dir or Path("outputs/multiruns") / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        if (sweep_dir / MANIFEST).exists():
            raise SystemExit(f"error: {sweep_dir} already holds a sweep; continue it with --resume {sweep_dir}")
        jobs, stored = plan(sweep_dir, args.overrides), {}
    opts = {
        "procs": args.procs if args.procs is not None else stored.get("procs", 1),
        "cpu": args.cpu if args.cpu is not None else stored.get("cpu", False),
        "launcher": args.launcher or stored.get("launcher", "auto"),
        "launch_args": shlex.split(args.launch_args) if args.launch_args is not None else stored.get("launch_args", []),
        "parallel": args.parallel if args.parallel is not None else stored.get("parallel", 1),
        "devices": args.devices.split(",") if args.devices else stored.get("devices"),
    }
    return Path(sweep_dir), jobs, opts


def _other_jobs(sweep_dir: Path, overrides: list[str]) -> str:
    """How the jobs ``overrides`` plan differ from those stored in ``sweep_dir`` ('' when they are the same set)."""
    stored = {tuple(j.overrides) for j in load_plan(sweep_dir)[0]}
    asked = {tuple(j.overrides) for j in plan(sweep_dir, overrides)}
    missing, extra = len(asked - stored), len(stored - asked)
    return "" if not (missing or extra) else f"{missing} asked job(s) not in it, {extra} of its jobs not asked"


def run_or_resume(sweep_dir: Path, overrides: list[str], options: list[str] = (), dry_run: bool = False) -> int:
    """Run a sweep into ``sweep_dir``, or continue it when the dir already holds one (completed jobs
    skipped, interrupted ones resumed): the building block of the benchmark scripts, which rerun
    the same command to continue. Runs ``python -m runner.sweep`` in a fresh process (nothing of
    one sweep leaks into the next); returns its exit code (0 with ``dry_run``, after printing it)."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / MANIFEST).is_file():
        other = _other_jobs(sweep_dir, overrides)
        if other:
            print(f"error: {sweep_dir} holds a sweep of other jobs ({other}); continuing it would not run what was "
                  "asked: give another output dir, or remove that one", file=sys.stderr, flush=True)
            return 2
        cmd = [sys.executable, "-m", "runner.sweep", "--resume", str(sweep_dir)]
    else:
        cmd = [sys.executable, "-m", "runner.sweep", *options, "--dir", str(sweep_dir), "--", *overrides]
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.call(cmd, cwd=repo, env=env)


def _credentials_through_environment(overrides: list[str]) -> list[str]:
    """``overrides`` with each credential read from a RUNNER_SECRET_* variable (set here from the value given, and
    remembered as a secret of this process): the jobs get it through the environment, never a file or a command line."""
    remember_overrides(overrides)
    overrides, found = overrides_through_environment(overrides)
    os.environ.update(found)
    return overrides


def _live_job(sweep_dir: Path, jobs: list[Job]) -> str | None:
    """Why the sweep may not touch its dir now: a job dir with a live owner (an orphan of a sweep that was killed,
    or a run started by hand), which is never moved or joined; None when there is none."""
    busy = [(job, pid) for job in jobs if (pid := runs.live_holder(Path(job.dir)))]
    if not busy:
        return None
    job, pid = busy[0]
    return (f"{sweep_dir}: job {job.name} is still running (pid {pid}), started by an earlier sweep or by hand; "
            f"wait for it to end or stop it (kill {pid}), then --resume"
            + (f" ({len(busy) - 1} more job(s) running)" if len(busy) > 1 else ""))


HELD_LOCKS: list = []  # the sweep dir's lock, held by this process while it runs the sweep


class _Refused(Exception):
    """A sweep that may not run as asked: one line on stderr, exit 2."""


@dataclass
class _Prepared:
    sweep_dir: Path
    jobs: list[Job]
    opts: dict
    stored: dict  # the manifest as found ({} for a new sweep)
    settings: dict  # each job's settings to keep in the manifest
    group: str | None  # the W&B group of the jobs
    todo: list[tuple[Job, bool]]  # (job, resume?) still to run


def _prepare(args) -> _Prepared:
    """The sweep's jobs, their settings and what is left to run; refuses (``_Refused``) what must not run."""
    try:
        args.overrides = _credentials_through_environment(args.overrides)
    except ConfigError as exc:
        raise _Refused(str(exc)) from None
    sweep_dir, jobs, opts = _plan_and_options(args)
    sweep_dir = Path(sweep_dir)
    for job in jobs:  # a Hydra multirun.yaml holds them masked (or, written before the runner cleaned it, in clear)
        job.overrides = _credentials_through_environment(job.overrides)
    stored = json.loads((sweep_dir / MANIFEST).read_text()) if (sweep_dir / MANIFEST).is_file() else {}
    # a dry run of a new sweep writes no manifest, so only the first job is composed (for its logger)
    settings, stale = job_settings(jobs, stored.get(SETTINGS) or {}) if stored or not args.dry_run else ({}, [])
    first = None
    if jobs:
        first = settings[jobs[0].name] if jobs[0].name in settings else composed_settings(jobs[0].overrides)
    if stale and not args.allow_changed_settings:
        raise _Refused(_stale_error(sweep_dir, stale))
    todo = jobs_to_run(jobs, args.retry_failed)
    missing = missing_sweep_variables([o for job, _ in todo for o in job.overrides])
    if missing and not args.dry_run:
        raise _Refused(f"{sweep_dir}'s jobs read credentials from the environment, never from the sweep's files: set "
                       f"{', '.join(missing)} (the value the sweep was given) and run it again")
    return _Prepared(sweep_dir, jobs, opts, stored, settings, sweep_dir.name if _uses_wandb(first) else None, todo)


def _launch(p: _Prepared, args, argv: list[str] | None) -> int:
    """Take the sweep dir (its lock, no live job in it), write the manifest, run the jobs, summarize."""
    p.sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        HELD_LOCKS.append(runs.DirLock(p.sweep_dir, "sweep").acquire())  # held until this process exits
    except ConfigError as exc:
        raise _Refused(str(exc)) from None
    busy = _live_job(p.sweep_dir, p.jobs)
    if busy:
        raise _Refused(busy)
    manifest = p.stored or {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": scrub(list(sys.argv[1:] if argv is None else argv), overrides=True),
        "made_by": "multirun.yaml (Hydra multirun)" if args.resume is not None else "runner.sweep"}
    manifest.update(options=p.opts, jobs=[asdict(j) for j in p.jobs], **{SETTINGS: p.settings})
    atomic_write_json(p.sweep_dir / MANIFEST, manifest)  # a Hydra multirun dir gets one too: later resumes read it
    for job, resume in p.todo:
        state = runs.state(Path(job.dir))
        if not resume and state != MISSING:  # failed (retried) or incomplete: keep the old dir aside, start fresh
            print(f"sweep: {job.name}: {state}; old dir kept as {runs.retire_dir(Path(job.dir))}", file=sys.stderr)
    opts = p.opts
    print(f"sweep: {len(p.jobs)} jobs in {p.sweep_dir}, {len(p.todo)} to run "
          f"({sum(r for _, r in p.todo)} resumed); {opts['procs']} process(es) per job, {opts['parallel']} at a time", file=sys.stderr)
    launcher = JobLauncher(p.sweep_dir, procs=opts["procs"], cpu=opts["cpu"], launcher=opts["launcher"],
                           launch_args=opts["launch_args"], parallel=opts["parallel"], devices=opts["devices"],
                           grace_s=args.grace, group=p.group)
    code = launcher.run(p.todo)
    rows = summarize(p.sweep_dir, p.jobs)
    print(f"\nsweep {p.sweep_dir}:\n" + summary_markdown(rows) + f"\nsummary: {p.sweep_dir / SUMMARY}.md (and .json)",
          file=sys.stderr)
    if code:
        print(f"sweep: stopped by a signal; continue with: python -m runner.sweep --resume {p.sweep_dir}", file=sys.stderr)
        return code
    return 0 if all(r["state"] == COMPLETED for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    register_config()
    args = _parser().parse_args(argv)
    if args.completed is not None:
        done_runs = completed_runs(args.completed, args.method)
        if not done_runs:
            raise SystemExit(f"error: no completed{' ' + args.method if args.method else ''} runs in {args.completed}")
        print(",".join(str(r.resolve()) for r in done_runs))
        return 0
    try:
        prepared = _prepare(args)
        if args.dry_run:
            for job, resume in prepared.todo:
                print(shlex.join(build_command(job, resume=resume, group=prepared.group,
                                               **{k: prepared.opts[k] for k in ("procs", "cpu", "launcher", "launch_args")})))
            return 0
        return _launch(prepared, args, argv)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
