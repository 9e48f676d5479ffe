"""A run paused with SIGTSTP (Ctrl-Z) and continued reports the time it ran, not the time it stood still."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import continue_after

from runner import run_clock


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the waker reads the process state from /proc (Linux)")
def test_the_run_clock_leaves_a_sigtstp_pause_out():
    before_paused, before, wall = run_clock.paused_s(), run_clock.now(), time.perf_counter()
    handler = signal.getsignal(signal.SIGTSTP)
    with run_clock.counting_pauses():
        for seconds in (1.0, 0.5):  # two pauses, each continued by a waker of its own
            waker = continue_after(seconds)
            os.kill(os.getpid(), signal.SIGTSTP)  # the handler stops this process until the waker continues it
            waker.wait(timeout=150)
    paused = run_clock.paused_s() - before_paused
    assert paused >= 1.5  # the seconds the process stood still (the wakers' sleeps) at least
    assert time.perf_counter() - wall >= paused
    assert run_clock.now() - before < time.perf_counter() - wall - 1.3  # the pauses are not in the run's clock
    assert signal.getsignal(signal.SIGTSTP) is handler  # the previous handler is back


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the waker reads the process state from /proc (Linux)")
def test_a_sigcont_that_comes_before_the_handler_runs_leaves_the_run_running():
    """Ctrl-Z then fg while the main thread is inside a long C call (a device sync, a checkpoint write): the
    handler runs only after both, finds the pause over, and does not stop the process (which nothing would
    continue). A waker continues it after 5 s should it stop anyway, and the test then fails on the count."""
    import threading

    import torch

    a = torch.randn(2000, 2000)
    before, threads = run_clock.paused_s(), torch.get_num_threads()
    torch.set_num_threads(1)  # the C call below lasts about a second, whatever the machine's cores
    with run_clock.counting_pauses():
        safety = continue_after(5.0)

        def ctrl_z_then_fg():
            time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTSTP)
            time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGCONT)

        signals = threading.Thread(target=ctrl_z_then_fg)
        signals.start()
        try:
            torch.linalg.matrix_power(a, 64)  # one C call (6 products of 2000 x 2000): no Python handler runs inside
        finally:
            torch.set_num_threads(threads)
        signals.join()
        time.sleep(0.05)  # the handlers run here, in order
    safety.kill()
    assert run_clock.paused_s() == before


def test_a_paused_timer_reports_the_pause_and_carries_it_over_a_resume(monkeypatch):
    from runner import measure

    paused = {"s": 5.0}
    monkeypatch.setattr(run_clock, "paused_s", lambda: paused["s"])
    timer = measure.PhaseTimer()  # created after 5 s of this process's pauses: not this run's
    assert timer.paused_s == 0.0
    paused["s"] = 7.5
    state = json.loads(json.dumps(timer.state_dict()))
    assert state["paused_s"] == 2.5
    resumed = measure.PhaseTimer()
    resumed.load_state_dict(state)
    paused["s"] = 8.0
    assert resumed.paused_s == 2.5 + 0.5


@pytest.mark.slow
def test_a_run_paused_mid_training_reports_its_own_time_and_the_pause(tiny_overrides, tmp_path):
    """A tiny run (steps of milliseconds) paused for 3 s mid-training: no step and no phase counts the pause,
    ``time.paused_s`` says how long it was, and the run completes."""
    env = {**os.environ, "HOME": str(tmp_path)}
    common = [o for o in tiny_overrides if not o.startswith(("trainer.epochs", "trainer.batch_size"))]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "runner", *common, "trainer.batch_size=8", "trainer.epochs=6",
           "trainer.log_every_steps=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    waker = continue_after(3.0, proc.pid)  # 3 s after the run has stopped itself
    try:
        proc.send_signal(signal.SIGTSTP)
        waker.wait(timeout=150)
    finally:
        proc.send_signal(signal.SIGCONT)  # whatever happened, nothing is left stopped
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    assert "left out of the run's times" in (run_dir / "__main__.log").read_text()  # the run's log says so
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"]["total"] == 48
    assert 3.0 <= results["time"]["paused_s"] <= 3.0 + 2.0
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert max(s["step_time_s"] for s in steps) < 2.0  # the paused step's time is its own, not the pause's
    assert results["time"]["train_s"] < sum(s["step_time_s"] for s in steps) + 2.0


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc (Linux)")
def test_ctrl_z_on_a_sweep_pauses_its_job_and_fg_continues_it(tiny_overrides, tmp_path, glue_dir):
    """A sweep's jobs are sessions of their own, out of the terminal's reach: the sweep passes SIGTSTP and SIGCONT
    on, so the job stops itself, continues with the sweep, and leaves the pause out of its times."""
    env = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir)}
    common = [o for o in tiny_overrides if not o.startswith(("trainer.epochs", "trainer.batch_size"))]
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner.sweep", "--dir", str(sweep), "--", *common,
                             "trainer.batch_size=8", "trainer.epochs=6", "trainer.log_every_steps=1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_dir = sweep / "0_mrpc-tiny-adapter-s42"
    metrics = job_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.02)
    job_pid = int((job_dir / ".lock").read_text().split()[0])
    try:
        proc.send_signal(signal.SIGTSTP)  # what Ctrl-Z sends the sweep's process group
        while time.time() < deadline and not (_state(proc.pid) == "T" and _state(job_pid) == "T"):
            time.sleep(0.02)
        assert _state(job_pid) == "T"  # the job stopped too
        time.sleep(2.0)
    finally:
        proc.send_signal(signal.SIGCONT)  # fg
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads((job_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["time"]["paused_s"] >= 2.0
