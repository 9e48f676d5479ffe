"""A run paused with SIGTSTP (Ctrl-Z) and continued reports the time it ran, not the time it stood still."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runner import run_clock


WAKER = """
import os, signal, sys, time
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":  # until the process has stopped
    time.sleep(0.01)
time.sleep(seconds)
os.kill(pid, signal.SIGCONT)
"""


def _continue_after(seconds: float) -> subprocess.Popen:
    """Another process that continues this one ``seconds`` after it has stopped (a stopped process cannot)."""
    return subprocess.Popen([sys.executable, "-c", WAKER, str(os.getpid()), str(seconds)])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the waker reads the process state from /proc (Linux)")
def test_the_run_clock_leaves_a_sigtstp_pause_out():
    before_paused, before, wall = run_clock.paused_s(), run_clock.now(), time.perf_counter()
    with run_clock.counting_pauses():
        waker = _continue_after(1.0)
        os.kill(os.getpid(), signal.SIGTSTP)  # the handler stops this process until the waker continues it
        waker.wait(timeout=30)
    paused = run_clock.paused_s() - before_paused
    assert paused >= 1.0  # the second the process stood still (the waker's sleep) at least
    assert time.perf_counter() - wall >= paused
    assert run_clock.now() - before < time.perf_counter() - wall - 0.8  # the pause is not in the run's clock
    assert signal.getsignal(signal.SIGTSTP) is not run_clock._pause  # the previous handler is back


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
    proc.send_signal(signal.SIGTSTP)
    time.sleep(3.0)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    assert "left out of the run's times" in (run_dir / "__main__.log").read_text()  # the run's log says so
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"]["total"] == 48
    assert 2.5 <= results["time"]["paused_s"] <= 3.5 + 2.0  # the handler runs at the next bytecode: a step late at most
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert max(s["step_time_s"] for s in steps) < 2.0  # the paused step's time is its own, not the pause's
    assert results["time"]["train_s"] < sum(s["step_time_s"] for s in steps) + 2.0
