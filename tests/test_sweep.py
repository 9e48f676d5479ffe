"""Jobs of a sweep in one process and the sweep runner's planning, without starting processes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

import runner.app as app_mod
import runner.train as train_mod
import runner.train_setup as train_setup
from runner.jobs import resolve_auto_resume
from runner.preflight.config import compose_config
from runner.runs import COMPLETED, FAILED, INCOMPLETE, INTERRUPTED, MISSING, RESUMABLE
from runner.runs import retire_dir as retire
from runner.runs import state as job_state
from runner.sweep import Job, build_command, completed_runs, expand, job_settings, jobs_to_run, load_plan, plan, summarize
from runner.sweep import main as sweep_main


def test_jobs_in_one_process_each_get_a_fresh_accelerator(tiny_overrides, tmp_path):
    """Accelerate's state is process-wide: without a reset the second job keeps the first one's settings (or refuses)."""
    from accelerate.state import AcceleratorState, PartialState

    first = train_mod.run(compose_config([*tiny_overrides, "trainer.mixed_precision=no"], output_dir=tmp_path / "a"))
    assert AcceleratorState._shared_state == {} and PartialState._shared_state == {}
    seen = {}
    original = train_mod.Recipe.setup

    def setup(self):
        seen["mixed_precision"] = self.accelerator.mixed_precision
        original(self)

    train_mod.Recipe.setup = setup
    try:
        second = train_mod.run(compose_config([*tiny_overrides, "trainer.mixed_precision=bf16", "trainer.grad_accum_steps=2"],
                                              output_dir=tmp_path / "b"))
    finally:
        train_mod.Recipe.setup = original
    assert first["status"] == second["status"] == "completed"
    assert seen["mixed_precision"] == "bf16"  # not the first job's "no"
    assert second["steps"]["total"] == 2  # 64 examples / (16 x 2 accumulation steps): the new accumulation was used


@pytest.fixture
def in_multirun(monkeypatch):
    monkeypatch.setattr(app_mod, "_is_multirun", lambda: True)


def test_a_crash_in_a_multirun_job_is_recorded_and_returns_none(tiny_overrides, tmp_path, monkeypatch, in_multirun, capsys):
    def explode(model, cfg):
        raise RuntimeError("adapter injection exploded")

    monkeypatch.setattr(train_setup, "prepare_trainable", explode)
    out = tmp_path / "job"
    assert app_mod.execute(compose_config(tiny_overrides, output_dir=out)) is None
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "failed" and record["stage"] == "before_training" and record["exit_code"] == 1
    assert record["error"] == "RuntimeError: adapter injection exploded"
    assert (record["task"], record["model"], record["method"], record["seed"]) == ("mrpc", "tiny", "adapter", 42)
    assert "crashed: RuntimeError: adapter injection exploded" in capsys.readouterr().err


def test_a_crash_during_training_keeps_the_runs_own_failed_results(tiny_overrides, tmp_path, monkeypatch, in_multirun):
    original = train_mod.Recipe.evaluate

    def evaluate(self):
        raise ValueError("metric exploded")

    monkeypatch.setattr(train_mod.Recipe, "evaluate", evaluate)
    out = tmp_path / "job"
    assert app_mod.execute(compose_config(tiny_overrides, output_dir=out)) is None
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "failed" and record["error"] == "ValueError: metric exploded"
    assert record["step"] == 4 and record["stage"] == "finish"  # written by the run itself: where it stopped, what it had done
    monkeypatch.setattr(train_mod.Recipe, "evaluate", original)


def test_bad_input_in_a_multirun_job_keeps_a_failure_record(tiny_overrides, tmp_path, in_multirun):
    out = tmp_path / "job"
    overrides = [o for o in tiny_overrides if not o.startswith("task.data_dir")] + [f"task.data_dir={tmp_path / 'nowhere'}"]
    assert app_mod.execute(compose_config(overrides, output_dir=out)) is None
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 3 and "does not exist" in record["error"]


def test_a_crash_in_a_single_run_is_one_line_and_the_traceback_goes_to_the_log(tiny_overrides, tmp_path, monkeypatch, capsys):
    import logging

    monkeypatch.setattr(train_setup, "prepare_trainable", lambda m, c: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")))
    log_file = tmp_path / "job.log"
    handler = logging.FileHandler(log_file)  # what Hydra's job logging installs
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exc:
            app_mod.execute(compose_config(tiny_overrides, output_dir=tmp_path / "job"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: job mrpc-tiny-adapter-s42 crashed: RuntimeError: boom (traceback in {log_file})"]
    assert "Traceback" not in err
    assert "Traceback (most recent call last)" in log_file.read_text() and "RuntimeError: boom" in log_file.read_text()
    # debug=true: the traceback itself
    with pytest.raises(RuntimeError, match="boom"):
        app_mod.execute(compose_config([*tiny_overrides, "debug=true"], output_dir=tmp_path / "job2"))


def test_resume_auto_skips_completed_resumes_checkpoints_and_retires_failed(tmp_path):
    def cfg_for(d):
        return compose_config(["resume=auto", "logger=none"], output_dir=d)

    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"status": "completed", "metrics": {"accuracy": 0.7}}))
    cfg = cfg_for(done)
    assert resolve_auto_resume(cfg)["metrics"]["accuracy"] == 0.7

    killed = tmp_path / "killed"
    (killed / "checkpoint").mkdir(parents=True)
    (killed / "checkpoint" / "meta.json").write_text(json.dumps({"global_step": 3}))
    cfg = cfg_for(killed)
    assert resolve_auto_resume(cfg) is None and cfg.resume is True

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps({"status": "failed", "error": "DataError"}))
    (failed / "metrics.jsonl").write_text("{}\n")
    cfg = cfg_for(failed)
    assert resolve_auto_resume(cfg) is None and cfg.resume is False
    assert not (failed / "results.json").exists()
    assert json.loads((failed / ".retired" / "1" / "results.json").read_text())["error"] == "DataError"

    fresh = compose_config(["resume=true"], output_dir=tmp_path / "x")
    assert resolve_auto_resume(fresh) is None and fresh.resume is True  # only "auto" is touched


def test_a_run_outside_a_sweep_keeps_its_wandb_group():
    cfg = compose_config(["logger=wandb", "task=glue/rte"])
    assert cfg.logger.group == "rte-minilm-adapter"
    assert compose_config(["logger=wandb", "logger.group=mine"]).logger.group == "mine"


def test_a_wandb_sweep_groups_its_jobs_under_the_sweep_dirs_name(tmp_path, capsys):
    assert sweep_main(["--dir", str(tmp_path / "grp"), "--dry-run", "--", "logger=wandb", "seed=1,2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("logger.group=grp" in line for line in lines)
    assert sweep_main(["--dir", str(tmp_path / "grp"), "--dry-run", "--", "logger=none", "seed=1,2"]) == 0
    assert "logger.group" not in capsys.readouterr().out
    assert not (tmp_path / "grp").exists()  # a dry run writes nothing


def test_the_grid_is_hydras_and_names_are_the_runners(tmp_path):
    jobs = expand(["task=glue/mrpc,glue/rte", "seed=1,2", "trainer.lr=1e-3"])
    assert jobs == [  # values as Hydra writes them into each job's overrides
        ["task=glue/mrpc", "seed=1", "trainer.lr=0.001"], ["task=glue/mrpc", "seed=2", "trainer.lr=0.001"],
        ["task=glue/rte", "seed=1", "trainer.lr=0.001"], ["task=glue/rte", "seed=2", "trainer.lr=0.001"],
    ]
    planned = plan(tmp_path, ["task=glue/mrpc,glue/rte", "method=adapter,full", "adapter=lora"])
    assert [j.name for j in planned] == ["0_mrpc-minilm-adapter-s42", "1_mrpc-minilm-full-s42",
                                         "2_rte-minilm-adapter-s42", "3_rte-minilm-full-s42"]
    assert planned[3].dir == str(tmp_path / "3_rte-minilm-full-s42")
    assert plan(tmp_path, ["task=glue/nope"])[0].name == "0_job"  # the job itself reports the bad override


@pytest.mark.parametrize("overrides", [
    ["task=glue/mrpc,glue/rte", "seed=1,2", "trainer.lr=1e-3"],
    ["seed=range(1,4)", "trainer.lr=choice(1e-4,1e-3)", "+trainer.x=1", "seed=5,6"],  # a later seed= replaces the first
    ["prune=hies", "prune.ratios=[0.1,0.3]", "model.pooling=mean,cls", "~logger"],
])
def test_the_grid_matches_hydras_own_basic_sweeper(overrides):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference, in the test only
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    assert expand(overrides) == BasicSweeper.split_arguments(parsed, None)[0]


def test_each_job_gets_its_own_launcher_command(tmp_path):
    job = Job(3, "3_mrpc-minilm-adapter-s1", ["task=glue/mrpc", "seed=1"], str(tmp_path / "3_mrpc-minilm-adapter-s1"))
    one = build_command(job, group="sw")
    assert one[1:] == ["-m", "runner", "task=glue/mrpc", "seed=1", "logger.group=sw", f"hydra.run.dir={job.dir}"]
    cpu = build_command(job, procs=2, cpu=True, resume=True)
    assert cpu[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cpu[-3:] == ["trainer.cpu=true", "resume=true", f"hydra.run.dir={job.dir}"]
    gpu = build_command(job, procs=4, launch_args=["--mixed_precision", "bf16"])
    assert gpu[1:7] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "--multi_gpu", "--main_process_port"]
    assert gpu[8:12] == ["--mixed_precision", "bf16", "-m", "runner"]
    acc_cpu = build_command(job, procs=2, cpu=True, launcher="accelerate")
    assert acc_cpu[1:7] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--main_process_port"]
    assert build_command(job, group="sw", procs=1)[0] == sys.executable


def test_job_states_and_a_hydra_multirun_dir_as_a_plan(tmp_path):
    sweep = tmp_path / "sweep"
    states = {"0_a": {"status": "completed"}, "1_b": {"status": "failed"}, "2_c": {"status": "interrupted"},
              "3_d": None, "4_e": {"status": "interrupted"}, "5_f": None}
    for name, results in states.items():
        d = sweep / name
        (d / ".hydra").mkdir(parents=True)
        if results:
            (d / "results.json").write_text(json.dumps(results))
    for name in ("2_c", "3_d"):
        (sweep / name / "checkpoint").mkdir()
        (sweep / name / "checkpoint" / "meta.json").write_text("{}")
    expected = [COMPLETED, FAILED, INTERRUPTED, RESUMABLE, INCOMPLETE, INCOMPLETE]
    assert [job_state(sweep / n) for n in states] == expected
    assert job_state(sweep / "9_never") == MISSING

    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None, "params": None},
        "overrides": {"task": ["trainer.lr=1e-3", "seed=1,2,3,4,5,6,7"]}}}))
    jobs, _ = load_plan(sweep)
    assert [j.name for j in jobs][:6] == list(states) and jobs[6].name == "6_mrpc-minilm-adapter-s7"
    assert jobs[4].overrides == ["trainer.lr=0.001", "seed=5"]
    rows = summarize(sweep, jobs)
    assert [r["state"] for r in rows] == [*expected, MISSING]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["counts"] == {"completed": 1, "failed": 1, "interrupted": 1, "resumable": 1, "incomplete": 2, "missing": 1}
    assert "| 6_mrpc-minilm-adapter-s7 | missing |" in (sweep / "sweep_summary.md").read_text()

    # what --resume does with each state
    todo = jobs_to_run(jobs)
    assert [(j.name, resume) for j, resume in todo] == [("2_c", True), ("3_d", True), ("4_e", False), ("5_f", False),
                                                          ("6_mrpc-minilm-adapter-s7", False)]
    assert [j.name for j, _ in jobs_to_run(jobs, retry_failed=True)][:1] == ["1_b"]
    kept = retire(sweep / "4_e")
    assert kept == sweep / ".retired" / "4_e.1" and (kept / "results.json").is_file() and not (sweep / "4_e").exists()
    assert retire(sweep / "5_f") == sweep / ".retired" / "5_f.1"


def test_completed_runs_of_a_sweep_feed_a_pruning_sweep(tmp_path, capsys):
    src = tmp_path / "safe"
    jobs = plan(src, ["task=glue/mrpc,glue/rte", "method=adapter,safe", "seed=1"])
    states = ["completed", "completed", "failed", "completed"]  # rte adapter failed
    for job, status in zip(jobs, states):
        Path(job.dir).mkdir(parents=True)
        method = job.overrides[1].split("=")[1]
        (Path(job.dir) / "results.json").write_text(json.dumps({"status": status, "method": method}))
    (src / "sweep.json").write_text(json.dumps({"jobs": [vars(j) for j in jobs]}))
    assert [p.name for p in completed_runs(src, "adapter")] == ["0_mrpc-minilm-adapter-s1"]
    assert [p.name for p in completed_runs(src)] == ["0_mrpc-minilm-adapter-s1", "1_mrpc-minilm-safe-s1", "3_rte-minilm-safe-s1"]
    assert sweep_main(["--completed", str(src), "--method", "safe"]) == 0
    listed = capsys.readouterr().out.strip()
    assert listed == f"{(src / '1_mrpc-minilm-safe-s1').resolve()},{(src / '3_rte-minilm-safe-s1').resolve()}"
    # the list is one sweep value: one pruning job per run, named after its source
    pruning = plan(tmp_path / "hies", [f"prune.from_run={listed}", "prune=hies"])
    assert [j.name for j in pruning] == ["0_prune-1_mrpc-minilm-safe-s1", "1_prune-3_rte-minilm-safe-s1"]
    assert pruning[1].overrides[0] == f"prune.from_run={(src / '3_rte-minilm-safe-s1').resolve()}"
    with pytest.raises(SystemExit, match="no completed full runs"):
        sweep_main(["--completed", str(src), "--method", "full"])


@pytest.mark.parametrize("sweep_arg", ["-m", "hparams_search=mrpc_optuna", "hydra.mode=MULTIRUN"])
def test_no_sweep_inside_a_distributed_launch(sweep_arg, tmp_path):
    import os
    import subprocess

    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "runner", sweep_arg, "seed=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "one sweep per rank" in proc.stderr and "python -m runner.sweep --procs N" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_run_or_resume_starts_a_sweep_then_continues_it(tmp_path, capsys):
    from runner.sweep import run_or_resume

    assert run_or_resume(tmp_path / "s", ["seed=1,2"], dry_run=True) == 0
    assert f"-m runner.sweep --dir {tmp_path / 's'} -- seed=1,2" in capsys.readouterr().out
    (tmp_path / "s").mkdir()
    jobs = [dataclasses.asdict(j) for j in plan(tmp_path / "s", ["seed=1,2"])]
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"jobs": jobs, "options": {}}))
    assert run_or_resume(tmp_path / "s", ["seed=2,1"], dry_run=True) == 0  # the same jobs, in any order
    assert capsys.readouterr().out.strip().endswith(f"-m runner.sweep --resume {tmp_path / 's'}")


def test_run_or_resume_refuses_a_dir_that_holds_other_jobs(tmp_path, capsys):
    """A benchmark rerun with other settings into the same dir must not 'continue' the old sweep and run nothing."""
    from runner.sweep import run_or_resume

    (tmp_path / "s").mkdir()
    jobs = [dataclasses.asdict(j) for j in plan(tmp_path / "s", ["seed=1", "model.pooling=cls"])]
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"jobs": jobs, "options": {}}))
    assert run_or_resume(tmp_path / "s", ["seed=1", "model.pooling=mean"], dry_run=True) == 2
    captured = capsys.readouterr()
    assert "holds a sweep of other jobs (1 asked job(s) not in it, 1 of its jobs not asked)" in captured.err
    assert "--resume" not in captured.out


def _planted_sweep(sweep: Path, jobs: list, settings: dict) -> None:
    """A sweep dir whose manifest stores ``settings`` and whose first job completed."""
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"jobs": [dataclasses.asdict(j) for j in jobs], "options": {},
                                                  "settings": settings}))
    Path(jobs[0].dir).mkdir()
    (Path(jobs[0].dir) / "results.json").write_text(json.dumps({"status": "completed", "metrics": {"accuracy": 0.8}}))


def test_a_resume_refuses_jobs_that_ran_with_settings_their_overrides_no_longer_compose_to(tmp_path, capsys):
    """A recipe (experiment=demo, a group default) changed after a benchmark ran it: continuing the sweep
    must not count the old runs as the new recipe's."""
    sweep = tmp_path / "s"
    jobs = plan(sweep, ["experiment=demo", "seed=1,2"])
    settings, stale = job_settings(jobs, {})
    assert stale == [] and settings[jobs[0].name]["model"]["pooling"] == "cls"
    assert settings[jobs[1].name]["seed"] == 2 and settings[jobs[0].name]["task"]["data_dir"] == "${glue_dir:}"  # unresolved
    before = json.loads(json.dumps(settings))
    for cfg in before.values():  # what demo composed to when the sweep was planned
        cfg["model"]["pooling"], cfg["trainer"]["lr"] = "mean", 5e-4
    _planted_sweep(sweep, jobs, before)  # job 0 completed, job 1 never ran

    assert sweep_main(["--resume", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "1 job(s) that already ran would now run with other settings" in err
    assert f"{jobs[0].name}: model.pooling ('mean' -> 'cls'), trainer.lr (0.0005 -> 0.001);" in err  # job 1 never ran
    assert "--allow-changed-settings" in err and err.count("\n") == 1

    assert sweep_main(["--resume", str(sweep), "--dry-run", "--allow-changed-settings"]) == 0
    out = capsys.readouterr().out
    assert "seed=2" in out and "seed=1" not in out  # the completed job is kept as it is

    shutil.rmtree(jobs[0].dir)  # removed: it reruns as the overrides compose now
    assert sweep_main(["--resume", str(sweep), "--dry-run"]) == 0
    assert "seed=1" in capsys.readouterr().out
    assert job_settings(jobs, before)[0][jobs[0].name]["model"]["pooling"] == "cls"  # what the manifest will then keep


def test_a_resume_refuses_a_job_that_ran_but_whose_overrides_no_longer_compose(tmp_path, capsys):
    """A config group option removed since the job ran: its old results cannot be told apart from a new
    recipe's, so the resume says so instead of keeping them silently."""
    sweep = tmp_path / "s"
    jobs = plan(sweep, ["experiment=demo", "seed=1"])
    settings, _ = job_settings(jobs, {})
    jobs[0].overrides.append("task=glue/no_such_task")  # as if conf/task/glue/no_such_task.yaml had been removed
    _planted_sweep(sweep, jobs, settings)
    assert sweep_main(["--resume", str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{jobs[0].name}: its overrides no longer compose (`python -m runner experiment=demo seed=1 task=glue/no_such_task` says why)" in err
    assert sweep_main(["--resume", str(sweep), "--dry-run", "--allow-changed-settings"]) == 0


def test_a_sweep_planned_from_one_cwd_resumes_from_another(tmp_path, monkeypatch):
    """The manifest's job dirs belong to the sweep dir: planned with a relative --dir, read from another cwd
    (or after the sweep dir moved), a completed job is still found as completed, not rerun."""
    monkeypatch.chdir(tmp_path)
    jobs = plan(Path("outputs/sweep"), ["seed=1,2"])
    sweep = tmp_path / "outputs" / "sweep"
    (sweep / jobs[0].name).mkdir(parents=True)
    (sweep / jobs[0].name / "results.json").write_text(json.dumps({"status": "completed"}))
    (sweep / "sweep.json").write_text(json.dumps({"jobs": [dataclasses.asdict(j) for j in jobs]}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded, _ = load_plan(sweep)
    assert [Path(j.dir) for j in loaded] == [sweep / j.name for j in jobs]
    assert [j.name for j, _ in jobs_to_run(loaded)] == [jobs[1].name]
    moved = tmp_path / "moved"
    sweep.rename(moved)
    assert [job_state(Path(j.dir)) for j in load_plan(moved)[0]] == [COMPLETED, MISSING]
