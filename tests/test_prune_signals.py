"""Every stage keeps the signal policy, pruning included (issue 38, rule 3), through the real command line.

A signal is injected at the first call of ``runner.prune.pipeline.run_pruning`` (tests/netguard/signal_at.py):
the job is then exactly inside pruning. An interrupted pruning job records ``interrupted`` and is rerun in
place with ``resume=auto``; a sweep of pruning jobs reruns it on ``--resume``; a run interrupted while
pruning after training keeps its training, which ``prune.from_run`` prunes and ``resume=auto`` prunes
again in place without retraining. The results equal an uninterrupted job's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose

from runner.app import execute
from runner.train import run

pytestmark = pytest.mark.slow

AT_PRUNING = "runner.prune.pipeline:run_pruning"
PRUNE = ["prune=hies", "prune.latency=none", "prune.calib_samples=8", "prune.save_model=none", "prune.ratio=0.25",
         "prune.ratios=[0.25]", "prune.compare=[hies]"]


def _cli(overrides: list[str], cwd: Path, signal_at: str | None = None, module: str = "runner") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TEST_SIGNAL_AT"}
    if signal_at:
        env["RUNNER_TEST_SIGNAL_AT"] = signal_at
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _job(overrides: list[str], out: Path, capsys) -> tuple[int, str]:
    """The same job in this process (exit code, stderr): the command line's own path is what the signal runs test."""
    try:
        execute(compose(overrides, out))
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _record(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def trained(tiny_overrides, tmp_path) -> tuple[list[str], Path]:
    """The common overrides and a completed fine-tuned run to prune."""
    src = tmp_path / "trained"
    assert run(compose(tiny_overrides, src))["status"] == "completed"
    return tiny_overrides, src


def test_an_interrupted_pruning_job_reruns_in_place_to_the_straight_jobs_results(trained, tmp_path, capsys):
    common, src = trained
    job = [*common, *PRUNE, f"prune.from_run={src}"]
    assert _job(job, tmp_path / "straight", capsys)[0] == 0
    reference = _record(tmp_path / "straight")

    # SIGTERM: one line, exit 143, an interrupted record
    out = tmp_path / "job"
    stopped = _cli([*job, f"hydra.run.dir={out}"], tmp_path, f"{AT_PRUNING}:SIGTERM")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert _errors(stopped.stderr) == [
        "error: interrupted by SIGTERM while pruning; nothing of the source run changed: rerun the same command "
        "with resume=auto to prune again in place"]
    assert _record(out)["status"] == "interrupted" and _record(out)["stage"] == "pruning"
    code, err = _job(job, out, capsys)  # the same command: refused, it names the way on
    assert code == 2 and "already holds a run" in err and "resume=true" in err
    resumed = _cli([*job, f"hydra.run.dir={out}", "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _job([*job, "resume=true"], out, capsys)[0] == 0
    assert (out / ".retired" / "1" / "config.yaml").is_file()  # the earlier attempt, kept aside
    assert not (out / ".retired" / "2").exists()  # the second resume found the job completed and did nothing

    # SIGKILL: config.yaml and whatever pruning wrote, no record; resume=auto reruns it too
    killed = tmp_path / "killed"
    stopped = _cli([*job, f"hydra.run.dir={killed}"], tmp_path, f"{AT_PRUNING}:SIGKILL")
    assert stopped.returncode == -signal.SIGKILL and (killed / "config.yaml").is_file()
    assert not (killed / "results.json").exists()
    assert _job([*job, "resume=auto"], killed, capsys)[0] == 0

    for rerun in (out, killed):
        record = _record(rerun)
        assert record["status"] == "completed"
        assert record["pruning"]["primary"]["metrics"] == pytest.approx(reference["pruning"]["primary"]["metrics"], rel=1e-6)

    code, err = _job([*common, *PRUNE, "prune.calib_samples=4", f"prune.from_run={src}", "resume=auto"], out,
                     capsys)  # another job is not this one's resume
    assert code == 2 and "holds another run than this pruning job (prune.calib_samples" in err


def test_a_sweep_of_pruning_jobs_reruns_its_interrupted_jobs_on_resume(trained, tmp_path):
    common, src = trained
    sweep = tmp_path / "sweep"
    overrides = [*common, *PRUNE, f"prune.from_run={src}", "seed=1,2"]
    first = _cli(["--dir", str(sweep), "--", *overrides], tmp_path, f"{AT_PRUNING}:SIGTERM", module="runner.sweep")
    assert first.returncode == 1, first.stderr[-2000:]
    assert "failed before" not in first.stderr
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [row["state"] for row in summary["jobs"]] == ["incomplete", "incomplete"]  # interrupted, nothing to resume from
    assert all(_record(sweep / row["dir"])["status"] == "interrupted" for row in summary["jobs"])

    resumed = _cli(["--resume", str(sweep)], tmp_path, module="runner.sweep")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 2}
    assert len(list((sweep / ".retired").iterdir())) == 2  # the interrupted attempts, kept


def test_a_job_killed_by_the_sweep_is_rerun_on_resume(trained, tmp_path):
    """SIGKILL (a scheduler after its grace period): no record of its own; the sweep records it interrupted."""
    common, src = trained
    sweep = tmp_path / "sweep"
    first = _cli(["--dir", str(sweep), "--", *common, *PRUNE, f"prune.from_run={src}"], tmp_path,
                 f"{AT_PRUNING}:SIGKILL", module="runner.sweep")
    assert first.returncode == 1
    job = next(p for p in sweep.iterdir() if p.name.startswith("0_"))
    assert _record(job)["status"] == "interrupted" and _record(job)["stage"] == "killed"
    resumed = _cli(["--resume", str(sweep)], tmp_path, module="runner.sweep")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _record(job)["status"] == "completed"


def test_pruning_after_training_interrupted_keeps_the_training_and_resumes_without_retraining(tiny_overrides, tmp_path,
                                                                                                capsys):
    job = [*tiny_overrides, *PRUNE]
    straight = tmp_path / "straight"
    assert _job(job, straight, capsys)[0] == 0

    out = tmp_path / "run"
    stopped = _cli([*job, f"hydra.run.dir={out}"], tmp_path, f"{AT_PRUNING}:SIGTERM")
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    (line,) = _errors(stopped.stderr)
    assert "the trained run is complete and kept: rerun with resume=auto" in line and f"prune.from_run={out}" in line
    record = _record(out)
    assert record["status"] == "interrupted" and record["stage"] == "post_train" and "pruning" not in record
    steps = (out / "steps.jsonl").read_text()

    # what the message promises: prune.from_run on it works ...
    assert _job([*job, f"prune.from_run={out}"], tmp_path / "elsewhere", capsys)[0] == 0
    # ... and resume=auto prunes again in place: no training step runs, the training numbers stay
    resumed = _cli([*job, f"hydra.run.dir={out}", "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record, reference = _record(out), _record(straight)
    assert record["status"] == "completed" and "stage" not in record and "error" not in record
    assert (out / "steps.jsonl").read_text() == steps
    assert record["metrics"] == reference["metrics"] and record["steps"] == reference["steps"]
    assert record["pruning"]["primary"]["metrics"] == pytest.approx(reference["pruning"]["primary"]["metrics"], abs=1e-6)
    assert record["pruning"]["pruned_again"]["earlier_attempt"].startswith("RunInterrupted: interrupted by SIGTERM")
    assert _job([*job, "resume=auto"], out, capsys)[0] == 0  # completed: skipped
    assert _record(out) == record


def test_a_pruning_job_never_writes_inside_its_source(trained, tmp_path):
    common, src = trained
    inside = src / "model" / "pruned"
    proc = _cli([*common, *PRUNE, f"prune.from_run={src}", f"hydra.run.dir={inside}"], tmp_path)
    assert proc.returncode == 2 and len(_errors(proc.stderr)) == 1 and "overlap" in proc.stderr
    assert not inside.exists()
