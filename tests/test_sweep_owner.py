"""One owner per sweep dir (issue 38, rule 7), through the real command line: a dir with a live owner (by
lock and pid) is never moved, every writer of a sweep dir takes the same lock, and a job never trains on
unseen after its sweep was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _cli(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class Holder:
    """Another live process holding a dir's lock (a job that outlived its sweep, a sweep that still runs)."""

    def __init__(self, directory: Path, what: str = "run"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from runner.runs import DirLock; "
             "DirLock(sys.argv[1], sys.argv[2]).acquire(); print('ok', flush=True); time.sleep(300)", str(directory), what],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _state(pid: int) -> str:
    """A process's state letter (R running, S sleeping, T stopped, ...) from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _record(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


def _long_job(tiny_overrides) -> list[str]:
    """A tiny job of a few hundred steps (seconds to tens of seconds), a checkpoint every 10."""
    return [o for o in tiny_overrides if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=60", "trainer.checkpoint_every_steps=10", "trainer.log_every_steps=1"]


def test_a_sweep_killed_with_sigkill_stops_its_job_and_resume_never_moves_a_live_one(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner.sweep", "--dir", str(sweep), "--", *_long_job(tiny_overrides)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    job = None
    while time.time() < deadline:
        job = next((p for p in sweep.glob("0_*") if (p / "metrics.jsonl").is_file()), None)
        if job is not None and len((job / "metrics.jsonl").read_text().splitlines()) >= 12:
            break
        time.sleep(0.1)
    assert job is not None, "the job never started training"
    proc.kill()  # SIGKILL: the sweep cannot forward anything
    proc.wait()

    # the job got SIGTERM from the kernel when its sweep died: it checkpoints and stops, it does not train on
    resumed = None
    deadline = time.time() + 120
    while time.time() < deadline:
        resumed = _cli(["-m", "runner.sweep", "--resume", str(sweep)], tmp_path)
        if resumed.returncode != 2:
            break
        # while it is still stopping, --resume refuses in one line and moves nothing
        (line,) = _errors(resumed.stderr)
        assert f"job {job.name} is still running (pid" in line and job.is_dir()
        assert not (sweep / ".retired").exists()
        time.sleep(0.5)
    assert resumed is not None and resumed.returncode == 0, resumed.stderr[-3000:]
    record = _record(job)
    assert record["status"] == "completed" and record["steps"]["total"] == 240
    assert (job / "config.yaml").is_file() and not (sweep / ".retired").exists()  # resumed in place, not rerun
    assert json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 1}


def test_resume_refuses_while_a_job_dir_has_a_live_owner(tiny_overrides, tmp_path):
    """The orphan's dir is never moved to .retired/ (before: an immediate --resume retired the live job's dir, the
    orphan completed in a recreated dir without config.yaml, and the summary said failed)."""
    sweep = tmp_path / "sweep"
    first = _cli(["-m", "runner.sweep", "--dir", str(sweep), "--", *tiny_overrides, "trainer.max_steps=1"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    job = next(sweep.glob("0_*"))
    (job / "results.json").write_text(json.dumps({"status": "failed", "error": "x"}))  # a rerun would retire it
    holder = Holder(job)
    try:
        refused = _cli(["-m", "runner.sweep", "--resume", str(sweep), "--retry-failed"], tmp_path)
        assert refused.returncode == 2
        (line,) = _errors(refused.stderr)
        assert f"job {job.name} is still running (pid {holder.proc.pid})" in line and f"kill {holder.proc.pid}" in line
        assert job.is_dir() and not (sweep / ".retired").exists()
    finally:
        holder.stop()
    again = _cli(["-m", "runner.sweep", "--resume", str(sweep), "--retry-failed"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _record(job)["status"] == "completed" and (sweep / ".retired").is_dir()


def test_a_hydra_multirun_and_a_sweep_never_share_a_dir(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    holder = Holder(sweep, "sweep")  # a runner.sweep at work in it
    try:
        multirun = _cli(["-m", "runner", "-m", *tiny_overrides, "trainer.max_steps=1", "seed=1,2",
                         f"hydra.sweep.dir={sweep}"], tmp_path)
        assert multirun.returncode == 2
        assert _errors(multirun.stderr) == [f"error: {sweep} is in use by another sweep (pid {holder.proc.pid}); "
                                            f"wait for it to finish or choose another hydra.sweep.dir"]
        assert sorted(p.name for p in sweep.iterdir()) == [".lock"]  # no job dir, no multirun.yaml
    finally:
        holder.stop()

    # and the other way round: a sweep into a dir a multirun holds (the multirun's own process holds it while it runs)
    env = {**os.environ, "RUNNER_TEST_SIGNAL_AT": "runner.train:run:SIGSTOP"}  # the multirun pauses in its first job
    multirun = subprocess.Popen([sys.executable, "-m", "runner", "-m", *tiny_overrides, "trainer.max_steps=1", "seed=1,2",
                                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and _state(multirun.pid) != "T":  # stopped, inside its first job
            time.sleep(0.1)
        assert _state(multirun.pid) == "T" and list(sweep.glob("0_*"))
        refused = _cli(["-m", "runner.sweep", "--resume", str(sweep)], tmp_path)
        assert refused.returncode == 2 and "is in use by another sweep" in refused.stderr
        assert not (sweep / "sweep.json").exists()
    finally:
        multirun.send_signal(signal.SIGCONT)
        multirun.wait(timeout=300)
    assert multirun.returncode == 0
    done = _cli(["-m", "runner.sweep", "--resume", str(sweep)], tmp_path)
    assert done.returncode == 0 and json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 2}
