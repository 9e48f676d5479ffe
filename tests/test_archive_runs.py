"""Keeping a benchmark's records in the repository: what scripts/archive_runs.py copies, what it leaves out,
and that the tables rebuilt from the copy are the tables of the original."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO, load_script
from test_safe_bench import _bench, _write_run


def _archive(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "archive_runs.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_completed_runs_and_tables_are_kept_and_rebuild_the_same_table(tmp_path):
    src, dest = tmp_path / "outputs" / "depth", tmp_path / "benchmarks" / "depth"
    sweep = src / "safe_mrpc" / "seed1"
    _write_run(sweep / "adapter" / "0_a", "mrpc", "adapter", 1, 0.85, 2e9, 200e12, 900.0)
    _write_run(sweep / "safe" / "0_s", "mrpc", "safe", 1, 0.86, 1.4e9, 180e12, 800.0)
    run = sweep / "safe" / "0_s"
    (run / "steps.jsonl").write_text('{"step": 1}\n')
    (run / "safe_freeze_timeline.png").write_bytes(b"png")
    for kept_out in ("checkpoint/meta.json", ".hydra/config.yaml", "wandb/run.json", "model/config.json"):
        (run / kept_out).parent.mkdir(parents=True, exist_ok=True)
        (run / kept_out).write_text("{}")
    (run / "model" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (sweep / "adapter" / "0_a" / "merged.safetensors").write_bytes(b"\0" * 16)  # weights beside a run's own files
    (run / "big.jsonl").write_bytes(b"x" * 3 * 2**20)
    _write_run(sweep / "safe" / "1_running", "mrpc", "safe", 2, 0.5, 1e9, 1e12, 1.0, status="running")
    (sweep / "safe" / "sweep.json").write_text("{}")
    assert _bench().main(["--tasks", "mrpc", "--all-seeds", "--from-sweep", str(src / "safe_mrpc"),
                          "--out", str(src / "safe_mrpc")]) == 0

    done = _archive(src, dest)
    assert done.returncode == 0, done.stderr
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == sorted([
        "safe_mrpc/seed1/adapter/0_a/config.yaml", "safe_mrpc/seed1/adapter/0_a/results.json",
        "safe_mrpc/seed1/safe/0_s/config.yaml", "safe_mrpc/seed1/safe/0_s/results.json",
        "safe_mrpc/seed1/safe/0_s/steps.jsonl", "safe_mrpc/seed1/safe/0_s/safe_freeze_timeline.png",
        "safe_mrpc/seed1/safe/sweep.json", "safe_mrpc/summary.json", "safe_mrpc/summary.md", "safe_mrpc/args.json",
    ])  # no checkpoint, Hydra or W&B files, no saved model, nothing of the run still running
    assert "big.jsonl (3.0 MB > 2 MB)" in done.stderr
    assert "10 file(s) copied" in done.stdout
    again = _archive(src, dest)
    assert "0 file(s) copied" in again.stdout  # unchanged files are not copied again

    assert _bench().main(["--tasks", "mrpc", "--all-seeds", "--from-sweep", str(dest / "safe_mrpc"),
                          "--out", str(tmp_path / "rebuilt")]) == 0
    original = json.loads((src / "safe_mrpc" / "summary.json").read_text())
    assert json.loads((tmp_path / "rebuilt" / "summary.json").read_text()) == original
    assert original["mrpc"]["safe"]["n"] == 1  # the running run counted in neither


def test_a_missing_source_is_refused_in_one_line(tmp_path):
    done = _archive(tmp_path / "nope", tmp_path / "dest")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"archive_runs: {tmp_path / 'nope'} is not a folder: give a benchmark's output folder, e.g. outputs/depth"]
    assert not (tmp_path / "dest").exists()


def test_a_run_that_completes_between_two_calls_in_one_process_is_copied_by_the_second(tmp_path):
    archive_runs = load_script("archive_runs")
    src, dest = tmp_path / "outputs", tmp_path / "records"
    run = src / "sweep" / "0_s"
    _write_run(run, "mrpc", "safe", 1, 0.5, 1e9, 1e12, 1.0, status="running")
    assert archive_runs.archive(src, dest, 2**20) == ([], [])  # still running: nothing kept
    record = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**record, "status": "completed"}))  # now completed
    copied, _ = archive_runs.archive(src, dest, 2**20)
    assert sorted(p.name for p in copied) == ["config.yaml", "results.json"]
