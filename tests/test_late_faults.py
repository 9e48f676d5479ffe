"""Faults late in a run, on a full or read-only disk, and from the outside (W&B): one line, a
documented exit code, and a record that tells the truth about what a resume continues from."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import compose
from netguard.recording_proxy import RecordingServer
from omegaconf import OmegaConf

import runner.app as app_mod
import runner.atomic_io as results_mod
import runner.checkpoint as checkpoint_mod
import runner.data as data_mod
import runner.train as train_mod
from runner.app import execute
from runner.preflight.errors import ConfigError
from runner.runs import DAMAGED
from runner.runs import state as job_state
from runner.sweep import Job, jobs_to_run, summarize
from runner.sweep import main as sweep_main
from runner.tracking import Tracker


@pytest.fixture
def common(tiny_overrides):
    """4 steps per epoch, 2 epochs (8 steps), a checkpoint every 4 steps (not at the last step)."""
    return [o for o in tiny_overrides if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=2", "trainer.checkpoint_every_steps=4", "trainer.log_every_steps=1", "trainer.lr=5e-3"]


def _exit(cfg, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        execute(cfg)
    return exc.value.code, capsys.readouterr().err


def _record(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _signal_at_final_evaluation(monkeypatch, *signums):
    original = train_mod.Recipe.evaluate

    def evaluate(self):
        if self.global_step == self.total_steps:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return original(self)

    monkeypatch.setattr(train_mod.Recipe, "evaluate", evaluate)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_sigterm_in_the_final_evaluation_checkpoints_the_last_step_and_resume_matches(common, tmp_path, monkeypatch, capsys):
    reference = train_mod.run(compose(common, tmp_path / "reference"))
    out = tmp_path / "run"
    _signal_at_final_evaluation(monkeypatch, signal.SIGTERM)
    code, err = _exit(compose(common, out), capsys)
    assert code == 143
    assert _error_lines(err) == ["error: interrupted by SIGTERM at step 8; checkpoint saved at step 8, continue with resume=true"]
    assert "Traceback" not in err
    record = _record(out)
    assert record["status"] == "interrupted" and record["step"] == 8 and record["checkpoint_step"] == 8
    monkeypatch.undo()
    resumed = train_mod.run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 8
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
    assert [e["step"] for e in resumed["eval_history"]] == [4, 8]  # the final evaluation once, not twice


def test_sigterm_while_saving_the_model_stops_after_the_save(common, tmp_path, monkeypatch, capsys):
    original = checkpoint_mod.save_trained_model

    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint_mod, "save_trained_model", save)
    out = tmp_path / "run"
    code, err = _exit(compose(common, out), capsys)
    assert code == 143 and "checkpoint saved at step 8" in err
    record = _record(out)
    assert record["status"] == "interrupted" and record["checkpoint_step"] == 8
    assert (out / "model").is_dir()  # the save finished before the run stopped


def test_a_second_signal_stops_at_once_and_the_record_names_the_last_checkpoint(common, tmp_path, monkeypatch, capsys):
    _signal_at_final_evaluation(monkeypatch, signal.SIGINT, signal.SIGINT)
    out = tmp_path / "run"
    code, err = _exit(compose(common, out), capsys)
    assert code == 130 and "Traceback" not in err
    assert _error_lines(err) == ["error: stopped at once by a second signal; "
                                 "resume=true continues from the checkpoint at step 4"]
    record = _record(out)
    assert record["status"] == "interrupted" and record["step"] == 8 and record["checkpoint_step"] == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_tokenisation_stops_in_one_line_and_leaves_no_dir(common, tmp_path, monkeypatch, capsys, signum):
    original = data_mod.tokenize

    def tokenize(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(data_mod, "tokenize", tokenize)
    out = tmp_path / "run"
    code, err = _exit(compose(common, out), capsys)
    assert code == 128 + signum and "Traceback" not in err
    assert _error_lines(err) == [f"error: interrupted by {signal.Signals(signum).name} during setup, before training; "
                                 "nothing to resume: rerun the command"]
    assert not out.exists()


def _no_space(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_a_full_disk_while_checkpointing_fails_in_one_line_with_a_record(common, tmp_path, monkeypatch, capsys):
    def save(accelerator, output_dir, meta, **kwargs):
        raise _no_space(Path(output_dir) / "checkpoint.tmp" / "model.safetensors")

    monkeypatch.setattr(checkpoint_mod, "save", save)
    out = tmp_path / "run"
    code, err = _exit(compose(common, out), capsys)
    assert code == 7 and "Traceback" not in err
    assert _error_lines(err) == [f"error: cannot write {out}/checkpoint.tmp/model.safetensors: No space left on device; "
                                 "free space or choose a writable place (hydra.run.dir=..., data_cache_dir=...); "
                                 "no checkpoint to resume from"]
    record = _record(out)
    assert record["status"] == "failed" and record["step"] == 4 and "No space left" in record["error"]


def test_a_full_disk_at_results_json_keeps_the_small_record_written_first(common, tmp_path, monkeypatch, capsys, caplog):
    original = results_mod.atomic_write_text

    def write(path, text):  # every JSON record goes through here, whoever writes it
        if Path(path).name == "results.json" and '"status": "running"' not in text:
            raise _no_space(path)
        return original(path, text)

    monkeypatch.setattr(results_mod, "atomic_write_text", write)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="runner.train"):
        code, err = _exit(compose(common, out), capsys)
    assert code == 7 and "Traceback" not in err and len(_error_lines(err)) == 1
    record = _record(out)  # the run could write nothing more: the small record from its start stays, not "completed"
    assert record["status"] == "running" and record["pid"] == os.getpid() and record["run_name"]
    assert "keeps its previous record" in caplog.text
    assert not list(out.glob(".results.json.*.tmp"))  # no half-written temporary left behind


def _readonly_dir(tmp_path) -> Path:
    """A place nobody can write: /sys for root (who ignores permissions), a 0o555 dir otherwise."""
    if os.geteuid() == 0:
        return Path("/sys")
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(0o555)
    return path


def test_a_readonly_run_dir_is_refused_before_hydra_makes_it(tmp_path, capsys):
    from runner.__main__ import _preflight

    target = _readonly_dir(tmp_path) / "runner-test" / "run"
    with pytest.raises(SystemExit) as exc:
        _preflight([f"hydra.run.dir={target}"])
    assert exc.value.code == 7
    assert capsys.readouterr().err.startswith(f"error: cannot write the run dir {target} ")
    _preflight([f"hydra.run.dir={tmp_path / 'ok' / 'run'}"])  # a writable place passes, nothing created
    assert not (tmp_path / "ok").exists()


def test_a_readonly_cache_costs_only_the_cache(common, tmp_path, caplog):
    cache = _readonly_dir(tmp_path) / "runner-cache"
    with caplog.at_level(logging.WARNING, logger="runner.data"):
        results = train_mod.run(compose([*common, f"data_cache_dir={cache}"], tmp_path / "run"))
    assert results["status"] == "completed"
    assert "tokenising in memory" in caplog.text and not cache.exists()


def test_an_environment_secret_inside_an_error_reaches_no_file(tiny_overrides, tmp_path, monkeypatch, capsys):
    secret = "sk-EnvSecretInPath-0123456789"
    monkeypatch.setenv("MY_SECRET_TOKEN", secret)
    monkeypatch.setattr(app_mod, "_is_multirun", lambda: True)  # a sweep job keeps a failure record
    sweep = tmp_path / "sweep"
    out = sweep / "0_job"
    overrides = [o for o in tiny_overrides if not o.startswith("task.data_dir")]
    cfg = compose([*overrides, "task.data_dir=/nonexistent/${oc.env:MY_SECRET_TOKEN}"], out)
    assert execute(cfg) is None
    err = capsys.readouterr().err
    assert "error:" in err and secret not in err and "/nonexistent/***" in err
    summarize(sweep, [Job(0, "0_job", [], str(out))])
    files = [p for p in sweep.rglob("*") if p.is_file()]
    assert {"results.json", "sweep_summary.json", "sweep_summary.md"} <= {p.name for p in files}
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert "/nonexistent/***" in _record(out)["error"]


def test_a_damaged_record_is_neither_rerun_nor_overwritten(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    damaged, done = sweep / "0_a", sweep / "1_b"
    for d in (damaged, done):
        (d / "model").mkdir(parents=True)
    (damaged / "results.json").write_text('{"status": "compl')
    (done / "results.json").write_text('{"status": "completed"}')
    (sweep / "sweep.json").write_text(json.dumps({"options": {}, "jobs": [
        {"num": 0, "name": "0_a", "overrides": ["seed=1"], "dir": str(damaged)},
        {"num": 1, "name": "1_b", "overrides": ["seed=2"], "dir": str(done)}]}))
    assert job_state(damaged) == DAMAGED
    jobs = [Job(0, "0_a", ["seed=1"], str(damaged)), Job(1, "1_b", ["seed=2"], str(done))]
    assert jobs_to_run(jobs) == []
    assert sweep_main(["--resume", str(sweep)]) == 1  # not every job completed
    err = capsys.readouterr().err
    assert f"0_a: skipped: {damaged}/results.json is unreadable (JSONDecodeError" in err
    assert f"summary: {sweep}/sweep_summary.md (and .json)" in err  # where the table went
    assert (damaged / "results.json").read_text() == '{"status": "compl'  # untouched
    rows = json.loads((sweep / "sweep_summary.json").read_text())["jobs"]
    assert rows[0]["state"] == DAMAGED and "restore it, or move the run dir away" in rows[0]["error"]


def test_resume_auto_on_a_damaged_record_fails_in_one_line(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{")
    code, err = _exit(compose([*tiny_overrides, "resume=auto"], out), capsys)
    assert code == 8 and _error_lines(err) == [
        f"error: {out}/results.json is unreadable (JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)); restore it, or move the run dir away to rerun it (its trained outputs are left untouched)"]
    assert (out / "results.json").read_text() == "{"


# ------------------------------------------------------------------- W&B


def _wandb_cfg(mode: str):
    return OmegaConf.create({"run_name": "r", "logger": {"_target_": "runner.tracking.start_wandb", "name": "wandb", "mode": mode, "project": "p", "entity": None,
                                                         "group": "g", "tags": []}})


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def refusing_server():
    """A W&B stand-in that refuses every key (HTTP 401) and records the requests that reach it."""
    server = RecordingServer(401, b'{"errors": [{"message": "invalid api key"}]}')
    yield server
    server.close()


@pytest.mark.parametrize("server", ["unreachable", "refusing"])
def test_wandb_with_a_key_but_no_usable_server_logs_offline_within_seconds(server, refusing_server, tmp_path, monkeypatch, caplog):
    url = f"http://127.0.0.1:{_closed_port()}" if server == "unreachable" else refusing_server.url
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="runner.tracking"):
        tracker = Tracker(_wandb_cfg("auto"), tmp_path, True, {"a": 1})
    try:
        assert time.perf_counter() - t0 < 30
        assert tracker.run.settings.mode == "offline"
        assert "logging offline" in caplog.text and len(caplog.records) == 1
        tracker.log({"x": 1.0}, 1)
    finally:
        tracker.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_wandb_tries_only_the_server_it_was_given_and_logs_one_line(refusing_server, network_guard, tmp_path,
                                                                    monkeypatch, caplog):
    """W&B keeps the settings of its first init in a process: an offline run first, with no
    WANDB_BASE_URL, made W&B 0.31 send the next run's key to its public default host instead of the one
    named (with an ERROR and a traceback from its own logger). Anything sent off this machine shows on
    the session's recording proxy, which W&B's service goes through for every host but loopback."""
    _, proxy = network_guard
    asked_before = len(proxy.seen)
    for var in ("WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    Tracker(_wandb_cfg("auto"), tmp_path / "first", True, {"a": 1}).finish()  # no key: offline
    monkeypatch.setenv("WANDB_BASE_URL", refusing_server.url)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    with caplog.at_level(logging.DEBUG):
        tracker = Tracker(_wandb_cfg("auto"), tmp_path / "second", True, {"a": 1})
    try:
        assert tracker.run.settings.mode == "offline"
    finally:
        tracker.finish()
    assert proxy.seen[asked_before:] == []  # nothing went to any other host
    assert any(r.endswith("/graphql") for r in refusing_server.seen), refusing_server.seen
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in shown] == ["runner.tracking"] and "logging offline" in shown[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # no traceback reached the user's log


def test_an_offline_wandb_run_leaves_nothing_in_the_users_log(tmp_path, monkeypatch):
    """W&B keeps its own records (its first init in a process turns its logger's propagation off; its
    debug.log has them): starting and finishing a run puts no W&B line on the user's console or log file.
    In a fresh process, since W&B sets its logger up once per process."""
    for var in ("WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    code = f"""
import logging
from omegaconf import OmegaConf
from runner.tracking import Tracker

class Shown(logging.Handler):
    def emit(self, record):
        print("shown:", record.name, record.getMessage())

logging.getLogger().addHandler(Shown())
logging.getLogger().setLevel(logging.DEBUG)
cfg = OmegaConf.create({OmegaConf.to_container(_wandb_cfg("auto"))!r})
tracker = Tracker(cfg, {str(tmp_path)!r}, True, {{"a": 1}})
tracker.log({{"x": 1.0}}, 1)
tracker.finish()
print("finished")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "finished"
    assert [line for line in proc.stdout.splitlines() if line.startswith("shown: wandb")] == []


def test_wandb_forced_online_without_a_server_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"W&B online logging cannot start \(127\.0\.0\.1:\d+: .*\); check WANDB_API_KEY"):
        Tracker(_wandb_cfg("online"), tmp_path, True, {"a": 1})
    assert time.perf_counter() - t0 < 10
