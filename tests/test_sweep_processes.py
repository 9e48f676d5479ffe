"""Real sweeps in subprocesses: Hydra multirun, submitit's local launcher, Optuna, 2 processes per job, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from wandb_files import find_run_file

from runner.aggregate import build_report
from runner.sweep import load_plan

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, glue_dir):
    e = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir), "WANDB_SILENT": "true"}
    e.pop("WANDB_API_KEY", None)
    e.pop("WANDB_MODE", None)
    return e


def run_cli(args, cwd, env, timeout=240):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_sweep_dir(root: Path) -> Path:
    dirs = list((root / "outputs" / "multiruns").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def short_positions_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with 128 positions: max_seq_length=256 is refused before training (exit 2, recorded)."""
    from transformers import AutoConfig, AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("tiny-128")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.max_position_embeddings = 128
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_multirun_2x2_with_a_failing_job(tiny_overrides, short_positions_model, tmp_path, env):
    overrides = [o for o in tiny_overrides if not o.startswith(("model.name_or_path", "logger", "trainer.max_seq_length"))]
    proc = run_cli(["-m", "runner", "-m", *overrides, f"model.name_or_path={short_positions_model}", "logger=wandb",
                    "task=glue/mrpc,glue/rte", "trainer.max_seq_length=64,256"], tmp_path, env)
    assert proc.returncode == 1, proc.stderr[-3000:]  # not every job completed (as runner.sweep says)
    assert "2 of 4 jobs did not complete" in proc.stderr
    sweep = one_sweep_dir(tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name for p in jobs] == ["0_mrpc-tiny-adapter-s42", "1_mrpc-tiny-adapter-s42",
                                      "2_rte-tiny-adapter-s42", "3_rte-tiny-adapter-s42"]
    results = {p.name[0]: json.loads((p / "results.json").read_text()) for p in jobs}
    assert [results[k]["status"] for k in "0123"] == ["completed", "failed", "completed", "failed"]
    for k in "13":
        assert "max_seq_length=256 exceeds the model's 128 positions" in results[k]["error"]  # caught before training
        assert results[k]["exit_code"] == 2
    # one W&B run per job, none shared, all in the sweep's group
    run_files = [find_run_file(p) for p in (jobs[0], jobs[2])]  # the refused jobs started no W&B run
    assert len({f.name for f in run_files}) == 2
    groups = {yaml.safe_load((p / "config.yaml").read_text())["logger"]["group"] for p in (jobs[0], jobs[2])}
    assert groups == {sweep.name}
    # the sweep's summary and the aggregation list the failure, and never average it
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 2, "failed": 2}
    report = build_report([sweep], tmp_path / "report", plots=False)
    assert sorted(report["problems"]["path"]) == [str(jobs[1]), str(jobs[3])]
    assert report["stats"].set_index("task").loc["rte", "n"] == 1
    assert [j.dir for j in load_plan(sweep)[0]] == [str(p) for p in jobs]


def test_submitit_local_launcher_runs_a_two_job_sweep(tiny_overrides, tmp_path, env):
    proc = run_cli(["-m", "runner", "-m", "hydra/launcher=local", *tiny_overrides, "seed=1,2"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = one_sweep_dir(tmp_path)
    assert (sweep / ".submitit").is_dir()  # ran through submitit, one process per job
    for name, seed in (("0_mrpc-tiny-adapter-s1", 1), ("1_mrpc-tiny-adapter-s2", 2)):
        r = json.loads((sweep / name / "results.json").read_text())
        assert r["status"] == "completed" and r["seed"] == seed
    assert json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 2}


def test_optuna_search_maximises_the_returned_metric(tiny_overrides, tmp_path, env):
    proc = run_cli(["-m", "runner", "hparams_search=mrpc_optuna", "hydra.sweeper.n_trials=2", *tiny_overrides], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = one_sweep_dir(tmp_path)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / f"{i}_mrpc-tiny-adapter-s42" / "results.json").read_text()) for i in (0, 1)]
    assert best["best_value"] == max(t["metrics"]["accuracy"] for t in trials)
    assert set(best["best_params"]) == {"trainer.lr", "adapter.r", "trainer.warmup_ratio"}


def test_sweep_of_jobs_with_two_processes_each(tiny_overrides, tmp_path, env):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "runner.sweep", "--procs", "2", "--cpu", "--dir", str(sweep), "--", *tiny_overrides,
                    "method=full", "adapter=none", "seed=1,2"], tmp_path, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("0_mrpc-tiny-full-s1", "1_mrpc-tiny-full-s2"):
        r = json.loads((sweep / name / "results.json").read_text())
        assert r["status"] == "completed" and r["provenance"]["num_processes"] == 2
        assert r["steps"]["per_epoch"] == 2  # 64 examples / (2 processes x batch 16)
        assert "torch.distributed.run --standalone --nproc_per_node=2" in (sweep / "logs" / f"{name}.log").read_text()
    assert json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 2}


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_metrics(tiny_overrides, tmp_path, env):
    from runner.preflight.config import compose_config
    from runner.train import run

    common = [o for o in tiny_overrides if not o.startswith(("trainer.epochs", "trainer.batch_size"))]
    common += ["trainer.batch_size=8", "trainer.epochs=2", "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=2"]
    reference = run(compose_config([*common, "seed=1"], output_dir=tmp_path / "reference"))

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "runner.sweep", "--dir", str(sweep), "--", *common, "seed=1,2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = sweep / "0_mrpc-tiny-adapter-s1" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # e.g. the sweep's own allocation ends
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "continue with: python -m runner.sweep --resume" in stderr
    partial = json.loads((metrics.parent / "results.json").read_text())
    assert partial["status"] == "interrupted" and 5 <= partial["step"] < 16
    assert not (sweep / "1_mrpc-tiny-adapter-s2").exists()  # no new job starts after the signal

    resumed = subprocess.run([sys.executable, "-m", "runner.sweep", "--resume", str(sweep)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming 0_mrpc-tiny-adapter-s1" in resumed.stderr and "starting 1_mrpc-tiny-adapter-s2" in resumed.stderr
    final = json.loads((metrics.parent / "results.json").read_text())
    assert final["status"] == "completed" and final["steps"]["total"] == 16
    assert final["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
    assert json.loads((sweep / "sweep_summary.json").read_text())["counts"] == {"completed": 2}
    again = subprocess.run([sys.executable, "-m", "runner.sweep", "--resume", str(sweep)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 to run" in again.stderr  # completed jobs are skipped
    # the manifest holds what each job's overrides composed to, and resuming real runs finds no change
    settings = json.loads((sweep / "sweep.json").read_text())["settings"]
    assert settings["0_mrpc-tiny-adapter-s1"]["trainer"]["checkpoint_every_steps"] == 2
    assert [settings[n]["seed"] for n in ("0_mrpc-tiny-adapter-s1", "1_mrpc-tiny-adapter-s2")] == [1, 2]
