"""Secrets never land in clear (issue 38, rule 6), through the real command line: a credential given as an
override to a single run, a ``runner.sweep`` or a Hydra ``-m`` multirun reaches no file under the output
dirs (W&B's offline files included) and no job's command line; a sweep hands it to its jobs through the
environment, and a resume asks for it there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KEY = "wbKeyFromAnOverride-0123456789abcdef"


@pytest.fixture
def job(tiny_overrides) -> list[str]:
    """A one-step tiny job logging to W&B offline, with the key given as an override."""
    return [o for o in tiny_overrides if not o.startswith("logger=")] + [
        "trainer.max_steps=1", "logger=wandb", "logger.mode=offline", f"logger.api_key={KEY}"]


@pytest.fixture
def env(tmp_path, glue_dir) -> dict:
    e = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir), "WANDB_SILENT": "true"}
    for name in ("WANDB_API_KEY", "WANDB_MODE", "RUNNER_SECRET_LOGGER_API_KEY"):
        e.pop(name, None)
    return e


def _cli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _files_holding(root: Path, secret: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes())


def test_a_single_run_given_the_key_as_an_override_writes_it_nowhere(job, tmp_path, env):
    for form in (f"logger.api_key={KEY}", f"+logger.api_key={KEY}"):  # the README's example has the +
        out = tmp_path / form.split("=")[0]
        proc = _cli(["-m", "runner", *[o for o in job if not o.startswith("logger.api_key")], form,
                     f"hydra.run.dir={out}"], tmp_path, env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert list(out.rglob("wandb/offline-run-*")) and _files_holding(out, KEY) == []
        assert KEY not in proc.stderr and KEY not in proc.stdout
        assert "api_key: '***'" in (out / "config.yaml").read_text()


def test_a_sweep_hands_the_key_to_its_jobs_through_the_environment(job, tmp_path, env):
    sweep = tmp_path / "sweep"
    proc = _cli(["-m", "runner.sweep", "--dir", str(sweep), "--", *job, "seed=1,2"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _files_holding(tmp_path, KEY) == []  # sweep.json, the summaries, logs/, every job's files, W&B's
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert "logger.api_key=${oc.env:RUNNER_SECRET_LOGGER_API_KEY}" in manifest["jobs"][0]["overrides"]
    logs = "".join(p.read_text() for p in (sweep / "logs").iterdir())
    assert "logger.api_key=${oc.env:RUNNER_SECRET_LOGGER_API_KEY}" in logs  # the job's command line: no value
    # each job really had the key: the W&B config of the run holds it masked, not empty
    assert all("api_key: '***'" in (d / "config.yaml").read_text() for d in sweep.glob("[01]_*"))

    swept = _cli(["-m", "runner.sweep", "--dir", str(tmp_path / "other"), "--", *job[:-1], f"logger.api_key={KEY},x{KEY}"],
                 tmp_path, env)
    assert swept.returncode == 2 and "logger.api_key is a credential: give one value, not a sweep" in swept.stderr
    assert KEY not in swept.stderr


def test_a_hydra_multirun_masks_the_key_and_a_resume_reads_it_from_the_environment(job, tmp_path, env):
    sweep = tmp_path / "multirun"
    proc = _cli(["-m", "runner", "-m", *job, "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _files_holding(tmp_path, KEY) == []  # multirun.yaml and every job's .hydra/ included
    assert "logger.api_key=***" in (sweep / "multirun.yaml").read_text()

    job_dir = next(sweep.glob("1_*"))
    (job_dir / "results.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    refused = _cli(["-m", "runner.sweep", "--resume", str(sweep), "--retry-failed"], tmp_path, env)
    assert refused.returncode == 2
    assert "set RUNNER_SECRET_LOGGER_API_KEY (the value the sweep was given)" in refused.stderr
    resumed = _cli(["-m", "runner.sweep", "--resume", str(sweep), "--retry-failed"], tmp_path,
                   {**env, "RUNNER_SECRET_LOGGER_API_KEY": KEY})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((job_dir / "results.json").read_text())["status"] == "completed"
    assert _files_holding(tmp_path, KEY) == []
