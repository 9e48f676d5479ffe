"""Faults during a run: nothing completed is lost, nothing unfinished looks finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import runner.train as train_mod
import runner.train_setup as train_setup
from runner.app import execute
from runner.atomic_io import atomic_write_json
from runner.preflight.config import compose_config
from runner.results import undeclared


def break_classifier_at(monkeypatch, step: int, make_output):
    """From the ``step``-th training forward pass on, the classifier returns ``make_output(logits)``."""
    original = train_setup.prepare_trainable
    calls = {"n": 0}

    def prepare(model, cfg):
        model = original(model, cfg)
        head = next(m for n, m in model.named_modules() if n.endswith("classifier") and hasattr(m, "weight"))

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] >= step:
                    return make_output(output)
            return output

        head.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_setup, "prepare_trainable", prepare)


def test_nan_loss_stops_marks_failed_and_keeps_last_checkpoint(tiny_overrides, tmp_path, monkeypatch, capsys):
    break_classifier_at(monkeypatch, 6, lambda out: out * float("nan"))
    out = tmp_path / "run"
    cfg = compose_config([*tiny_overrides, "trainer.batch_size=8", "trainer.checkpoint_every_steps=2"], output_dir=out)
    with pytest.raises(SystemExit) as exit_info:
        execute(cfg)
    assert exit_info.value.code == 5
    assert "loss is nan at step 6" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and results["step"] == 6 and "nan" in results["error"]
    assert undeclared(results) == []
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["global_step"] == 4  # the last good checkpoint survives
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]  # what was computed is kept, the NaN step too
    assert all(s["loss"] == s["loss"] for s in steps[:5]) and steps[5]["loss"] != steps[5]["loss"]


def test_out_of_memory_suggests_the_knobs(tiny_overrides, tmp_path, monkeypatch, capsys):
    def oom(_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    break_classifier_at(monkeypatch, 2, oom)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        execute(compose_config(tiny_overrides, output_dir=out))
    assert exit_info.value.code == 6
    err = capsys.readouterr().err
    assert "out of memory" in err and "trainer.batch_size" in err and "trainer.grad_accum_steps" in err
    assert "trainer.max_seq_length" in err and "mixed_precision" in err
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


def test_crash_while_writing_results_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"status": "completed", "metrics": {"accuracy": 0.8}})

    class Exploding:
        def __float__(self):
            raise RuntimeError("disk full")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "completed", "metrics": {"accuracy": 0.9}})
    monkeypatch.undo()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"status": "completed", "bad": object()})
    assert json.loads(path.read_text()) == {"status": "completed", "metrics": {"accuracy": 0.8}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary files left


def _cli(overrides, cwd, env):
    return [sys.executable, "-m", "runner", *overrides], dict(cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_reaches_the_uninterrupted_metrics(tiny_overrides, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    common = [o for o in tiny_overrides if not o.startswith(("trainer.epochs", "trainer.batch_size"))]
    common += ["trainer.batch_size=8", "trainer.epochs=3", "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=3"]

    # uninterrupted reference, same seed
    ref = tmp_path / "reference"
    cmd, kw = _cli([*common, f"hydra.run.dir={ref}"], tmp_path, env)
    proc = subprocess.run(cmd, timeout=300, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]

    # the same run, terminated part way (at least 7 of 24 steps done)
    run_dir = tmp_path / "interrupted"
    cmd, kw = _cli([*common, f"hydra.run.dir={run_dir}"], tmp_path, env)
    proc = subprocess.Popen(cmd, **kw)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "interrupted by SIGTERM" in stderr and "resume=true" in stderr
    partial = json.loads((run_dir / "results.json").read_text())
    assert partial["status"] == "interrupted"
    stopped_at = partial["step"]
    assert 7 <= stopped_at < 24
    meta = json.loads((run_dir / "checkpoint" / "meta.json").read_text())
    assert meta["global_step"] == stopped_at
    timer = meta["timer_state"]  # the training time so far, eval between epochs apart
    carried = timer["seconds"]["train"] - sum(v for outer, inner, v in timer["nested"] if (outer, inner) == ("train", "eval"))

    cmd, kw = _cli([*common, f"hydra.run.dir={run_dir}", "resume=true"], tmp_path, env)
    proc = subprocess.run(cmd, timeout=300, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((ref / "results.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 24
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(line)["loss"] for line in (ref / "steps.jsonl").read_text().splitlines()]
    assert [s["loss"] for s in steps] == pytest.approx(ref_losses, rel=1e-6)
    # the training time is the whole run's: the steps before the interruption are in train_s, not only the resumed ones
    assert reference["time"]["resumes"] == [] and resumed["time"]["resumes"] == [{"step": stopped_at, "time_carried": True}]
    assert carried >= 0.5 * sum(s["step_time_s"] for s in steps if s["step"] <= stopped_at)
    assert resumed["time"]["train_s"] >= carried + 0.5 * sum(s["step_time_s"] for s in steps if s["step"] > stopped_at)


def test_credentials_from_the_environment_appear_in_no_file(tiny_overrides, tmp_path, monkeypatch):
    secrets = {"WANDB_API_KEY": "wandbfakekey0123456789abcdef0123456789abcd", "HF_TOKEN": "hf_FakeToken0123456789abcdefXYZ",
               "AWS_SECRET_ACCESS_KEY": "awsFakeSecret/0123456789abcdefghij", "MY_SERVICE_PASSWORD": "pw-Fake-0123456789"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a fake key must not go online
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides if o != "logger=none"]
    # a secret passed through an interpolation into the config is scrubbed too
    train_mod.run(compose_config([*overrides, "logger=wandb", "+logger.note=${oc.env:HF_TOKEN}"], output_dir=out))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "results.json" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name} leaked into {path.relative_to(out)}"


def test_settings_named_like_tokens_keep_their_values():
    """safe.max_tokens is a setting, not a credential: config.yaml and overrides keep it (a masked value would
    hide it from the reader and from a resume's comparison); a key naming a token still masks."""
    from runner.secrets import MASK, scrub

    config = {"safe": {"max_tokens": 1024}, "model": {"tokenizer": "bert"}, "time": {"train_tokens_per_s": 9.5},
              "hf_token": "hf-Fake-0123456789",
              "logger": {"api_token": "x", "access-token": "y", "token": "z", "hubToken": "w", "hftoken": "v"}}
    assert scrub(config, secrets=[]) == {
        "safe": {"max_tokens": 1024}, "model": {"tokenizer": "bert"}, "time": {"train_tokens_per_s": 9.5},
        "hf_token": MASK, "logger": {"api_token": MASK, "access-token": MASK, "token": MASK, "hubToken": MASK,
                                     "hftoken": MASK}}
    line = "safe.max_tokens=2048,trainer.lr=0.001,+logger.api_token=sk-Fake-0123456789"
    assert scrub(line, secrets=[], overrides=True) == f"safe.max_tokens=2048,trainer.lr=0.001,+logger.api_token={MASK}"


@pytest.mark.slow
def test_credentials_given_as_overrides_appear_in_no_file(tiny_overrides, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_MODE": "offline", "MY_SERVICE_TOKEN": "tok-FakeOverride-0123456789"}
    overrides = [o for o in tiny_overrides if o != "logger=none"] + ["logger=wandb", "trainer.max_steps=2"]

    # a credential under a key the runner does not have is refused in one line naming the key, not the value
    refused = tmp_path / "refused"
    # (logger.api_key is one: tests/test_sweep_secrets.py)
    cmd, kw = _cli([*overrides, "+logger.api_token=sk-FakeOverrideKey0123456789", f"hydra.run.dir={refused}"], tmp_path, env)
    proc = subprocess.run(cmd, timeout=300, **kw)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: logger.api_token is not a setting; did you mean logger.api_key?")
    assert not refused.exists()

    # a credential typed into a real key (here the W&B group) reaches no file: not .hydra/, config, results, W&B
    run_dir = tmp_path / "run"
    cmd, kw = _cli([*overrides, "logger.group=tok-FakeOverride-0123456789", f"hydra.run.dir={run_dir}"], tmp_path, env)
    proc = subprocess.run(cmd, timeout=300, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.parent.name == ".hydra" for p in files) and any(p.suffix == ".wandb" for p in files)
    for path in files:
        assert b"tok-FakeOverride-0123456789" not in path.read_bytes(), f"leaked into {path.relative_to(run_dir)}"
    assert "logger.group=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()