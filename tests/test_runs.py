"""A run dir's record survives failed attempts, is never shared, mixed or overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
from helpers import compose

from runner.app import execute
from runner.methods import StepUpdate, TrainingMethod
from runner.preflight.schema import SafeSettings
from runner.runs import DirLock, changed_settings, traces, trim_metrics
from runner.train import run


@pytest.fixture
def common(tiny_overrides):
    """4 steps per epoch, 2 epochs, a checkpoint every 4 steps, every step logged."""
    return [o for o in tiny_overrides if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=2", "trainer.checkpoint_every_steps=4", "trainer.log_every_steps=1", "trainer.lr=5e-3"]


def _crash_at(monkeypatch, at: int):
    def crash(self, ctx, step):
        if step == at:
            raise RuntimeError(f"simulated crash at step {at}")
        return StepUpdate()

    monkeypatch.setattr(TrainingMethod, "on_step_end", crash)


def _interrupted_run(common, out, monkeypatch, at=6):
    _crash_at(monkeypatch, at)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose(common, out))
    monkeypatch.undo()
    return json.loads((out / "results.json").read_text())


def _exit_code(cfg, capsys) -> tuple[int, str]:
    capsys.readouterr()  # what earlier runs printed
    with pytest.raises(SystemExit) as exc:
        execute(cfg)
    return exc.value.code, capsys.readouterr().err


def test_the_record_says_what_resume_continues_from_and_metrics_hold_each_step_once(common, tmp_path, monkeypatch):
    out = tmp_path / "run"
    partial = _interrupted_run(common, out, monkeypatch, at=6)
    assert partial["status"] == "failed" and partial["step"] == 6 and partial["checkpoint_step"] == 4
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed"
    steps = [json.loads(line)["global_step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == list(range(1, 9))  # 5 and 6 were logged twice before


def test_a_failed_resume_keeps_the_previous_record(common, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    partial = _interrupted_run(common, out, monkeypatch, at=6)
    steps_before = (out / "steps.jsonl").read_text()
    weights = out / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated checkpoint
    code, err = _exit_code(compose([*common, "resume=true"], out), capsys)
    assert code == 8 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: cannot read the checkpoint {out / 'checkpoint'} (SafetensorError: Error while deserializing header: "
        "invalid header length); it is damaged or incomplete: start over in a new dir (or restore it)"]
    kept = json.loads((out / "results.json").read_text())
    assert {k: kept[k] for k in ("status", "step", "checkpoint_step")} == {"status": "failed", "step": 6, "checkpoint_step": 4}
    assert kept["eval_history"] == partial["eval_history"]
    assert len(kept["attempts"]) == 1 and kept["attempts"][0]["status"] == "failed"
    assert (out / "steps.jsonl").read_text() == steps_before


def test_resume_refuses_other_settings(common, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_run(common, out, monkeypatch)
    code, err = _exit_code(compose([*common, "resume=true", "seed=7", "trainer.lr=1e-2"], out), capsys)
    assert code == 2 and "other settings" in err and "seed (42 -> 7)" in err and "trainer.lr" in err
    assert len(err.strip().splitlines()) == 1
    assert json.loads((out / "results.json").read_text())["status"] == "failed"  # untouched


def test_a_dir_with_any_trace_of_a_run_is_taken(common, tmp_path, capsys):
    out = tmp_path / "killed"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"global_step": 1, "train/loss": 0.7}\n')  # kill -9 before any checkpoint
    code, err = _exit_code(compose(common, out), capsys)
    assert code == 2 and "already holds a run (metrics.jsonl)" in err
    assert (out / "metrics.jsonl").read_text().count("\n") == 1  # nothing mixed in


@pytest.mark.slow
def test_a_locked_dir_is_refused_and_a_stale_lock_is_not(common, tmp_path, capsys):
    out = tmp_path / "busy"
    helper = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                               "from runner.runs import DirLock; DirLock(sys.argv[1]).acquire(); print('ok', flush=True);"
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout.readline().strip() == "ok"
        code, err = _exit_code(compose(common, out), capsys)
        assert code == 2 and "in use by another run (pid" in err
    finally:
        helper.kill()
        helper.wait()
    assert (out / ".lock").is_file() and traces(out) == []  # the holder died: a stale lock file
    res = run(compose(common, out))
    assert res["status"] == "completed"


def test_two_sweeps_in_one_dir(tmp_path):
    from runner.sweep import main as sweep_main

    with DirLock(tmp_path / "sweep", "sweep"):
        assert sweep_main(["--dir", str(tmp_path / "sweep"), "--", "seed=1"]) == 2


def test_resume_from_a_half_swapped_checkpoint(common, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_run(common, out, monkeypatch, at=6)
    (out / "checkpoint").rename(out / ".checkpoint.old")  # kill -9 between save's two renames
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 8


def test_pruning_never_writes_into_a_finished_run(common, tmp_path, capsys):
    src = tmp_path / "trained"
    run(compose(common, src))
    before = (src / "results.json").read_text()
    prune = ["prune=his", "prune.latency=none", "prune.calib_samples=8", "prune.save_model=none"]
    for target in (src, tmp_path / "other"):
        if target != src:
            run(compose(common, target))
        code, err = _exit_code(compose([*common, *prune, f"prune.from_run={src}"], target), capsys)
        assert code == 2, err
    assert (src / "results.json").read_text() == before


def test_pruning_refuses_a_source_whose_training_failed(common, tmp_path, monkeypatch, capsys):
    src = tmp_path / "failed"
    _interrupted_run(common, src, monkeypatch, at=6)
    (src / "model").mkdir()  # even with a model folder
    code, err = _exit_code(compose([*common, "prune=his", f"prune.from_run={src}"], tmp_path / "p"), capsys)
    assert code == 2 and "results say failed" in err


def test_helpers():
    assert changed_settings({"a": 1, "t": {"lr": 1, "progress_bar": True}, "resume": False},
                            {"a": 1, "t": {"lr": 2, "progress_bar": False}, "resume": True},
                            allowed=("resume", "t.progress_bar")) == ["t.lr"]


def test_a_run_saved_before_a_setting_existed_resumes_while_the_setting_keeps_its_default():
    """Upgrading the runner adds settings (trainer.tf32, trainer.compile, ...); a run saved before them resumes when
    they are at their defaults, and is refused when one was set otherwise."""
    saved = {"trainer": {"lr": 1e-3, "sharpness": {"enabled": False}}, "adapter": {"r": 8}}
    now = {"trainer": {"lr": 1e-3, "tf32": "auto", "compile": False, "activations_check_every": 100,
                       "sharpness": {"enabled": False, "iters": 20}}, "adapter": {"r": 8}}
    assert changed_settings(saved, now) == []
    now["trainer"]["compile"] = True
    now["adapter"]["new_knob"] = 1  # a group with several schemas: no single default, still a change
    assert changed_settings(saved, now) == ["adapter.new_knob", "trainer.compile"]


def test_a_run_saved_when_max_tokens_was_masked_resumes():
    """Runners before 2026-12-07 wrote safe.max_tokens as '***' (the word "token"): such a run resumes, as its
    value cannot be compared; a credential's mask and any other setting still compare."""
    saved = {"safe": {"max_tokens": "***", "threshold": 0.2}, "logger": {"api_key": "***"}}
    assert changed_settings(saved, {"safe": {"max_tokens": 1024, "threshold": 0.2}, "logger": {"api_key": "***"}}) == []
    assert changed_settings(saved, {"safe": {"max_tokens": 1024, "threshold": 0.5}, "logger": {"api_key": "***"}}) == [
        "safe.threshold"]
    assert changed_settings({"safe": {"max_tokens": 1024}}, {"safe": {"max_tokens": 2048}}) == ["safe.max_tokens"]


def test_a_run_saved_while_safes_policy_was_the_freeze_group_resumes():
    """SAFE's policy was a group of its own (freeze.name) and is now safe.policy: a run saved before resumes with the
    same policy, and is refused with another one; a sweep planned with freeze=X composes safe.policy=X."""
    from runner.preflight.schema import upgrade_overrides

    safe = {"threshold": 0.2, "t_w": 0.3, "seed": 1}
    saved = {"seed": 1, "method": {"name": "safe"}, "freeze": {"name": "random"}, "safe": safe}
    assert changed_settings(saved, {"seed": 1, "method": {"name": "safe"}, "safe": {**safe, "policy": "random"}}) == []
    assert changed_settings(saved, {"seed": 1, "method": {"name": "safe"}, "safe": {**safe, "policy": "safe"}}) == ["safe.policy"]
    # freeze=none under method=safe composed no safe settings; now they are there, unused
    plain = {"seed": 1, "method": {"name": "safe"}, "freeze": {"name": "none"}}
    now = {"seed": 1, "method": {"name": "safe"}, "safe": {**asdict(SafeSettings()), "policy": "none", "seed": 1}}
    assert changed_settings(plain, now) == []
    assert upgrade_overrides(["method=safe", "freeze=static", "safe.static_k=2"]) == [
        "method=safe", "safe.policy=static", "safe.static_k=2"]


def test_a_run_saved_before_method_checks_existed_resumes():
    """method.checks names the function that checks a config, not what the run computes: a SAFE run saved before
    the key existed (or under another checker) resumes."""
    saved = {"method": {"name": "safe", "uses_adapters": True}}
    now = {"method": {"name": "safe", "uses_adapters": True, "checks": "runner.safe.checks.check_config"}}
    assert changed_settings(saved, now) == []
    assert changed_settings({"method": {"checks": "a.b"}}, {"method": {"checks": "c.d"}}) == []


def test_trim_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"global_step": s}) + "\n" for s in (1, 2, 3, 4, 3)) + "not json\n")
    assert trim_metrics(path, 2) == 4
    assert [json.loads(x)["global_step"] for x in path.read_text().splitlines()] == [1, 2]


def test_an_adapter_checkpoint_holds_only_what_trained_and_resumes_exactly(common, tmp_path, monkeypatch):
    from safetensors import safe_open

    from runner.adapters import is_adapter_param, is_head_param

    reference = run(compose(common, tmp_path / "reference"))
    out = tmp_path / "run"
    _interrupted_run(common, out, monkeypatch, at=6)  # checkpoint at step 4
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["global_step"] == 4 and meta["weights"] == "trained"
    with safe_open(str(out / "checkpoint" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    # adapters, the classifier and (cls pooling, the tiny model's default) the pooler that trains beside them
    trained = [k for k in keys if not (is_adapter_param(k) or is_head_param(k) or ".pooler." in k)]
    assert keys and not trained, trained[:5]
    assert not any("word_embeddings" in k or k.endswith("attention.self.query.base_layer.weight") for k in keys)
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
    ref_losses = [json.loads(line)["loss"] for line in (tmp_path / "reference" / "steps.jsonl").read_text().splitlines()]
    losses = [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref_losses, rel=1e-6)


def test_a_full_fine_tuning_checkpoint_holds_every_weight(common, tmp_path, monkeypatch):
    from safetensors import safe_open

    out = tmp_path / "run"
    full = [*common, "method=full", "adapter=none"]
    _crash_at(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose(full, out))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["weights"] == "all"
    with safe_open(str(out / "checkpoint" / "model.safetensors"), framework="pt") as f:
        assert any("word_embeddings" in k for k in f.keys())


@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "group_by_length"])
def test_a_sigterm_mid_epoch_resumes_on_the_next_batch_with_the_uninterrupted_losses(common, tmp_path, monkeypatch, grouped):
    """A real SIGTERM at step 2 of 4 in the first epoch: the checkpoint is mid-epoch, so the resume must
    skip the two batches already trained on (skip_first_batches) and replay dropout exactly; with
    trainer.group_by_length too (its order depends on seed and epoch only)."""
    import os
    import signal

    from runner.stop_signals import RunInterrupted

    common = [*common, f"trainer.group_by_length={str(grouped).lower()}"]

    reference = run(compose(common, tmp_path / "reference"))
    ref_losses = [s["loss"] for s in _steps(tmp_path / "reference")]
    tokens = [s["tokens"] for s in _steps(tmp_path / "reference")][:4]  # epoch 0: one mega-batch of 64 examples
    assert (tokens == sorted(tokens, reverse=True)) == grouped  # grouped: longest examples first

    original = TrainingMethod.on_step_end

    def terminate_at_2(self, ctx, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run: finish the step, checkpoint, stop
        return original(self, ctx, step)

    out = tmp_path / "run"
    monkeypatch.setattr(TrainingMethod, "on_step_end", terminate_at_2)
    with pytest.raises(RunInterrupted):
        run(compose(common, out))
    monkeypatch.undo()
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "interrupted" and record["checkpoint_step"] == 2  # mid-epoch: 4 steps per epoch
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 8
    assert [s["loss"] for s in _steps(out)] == pytest.approx(ref_losses, rel=1e-6)
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)


def _steps(run_dir):
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["model.short_name=/../../../escaped", "run_name=a/../../b", "model.short_name=" + "x" * 600])
def test_a_name_from_a_setting_never_leaves_the_output_root(name, tiny_overrides, glue_dir, tmp_path, runner_processes):
    """Dirs named after settings stay one component inside their parent (issue 38, rule 5): a '/' or '..' in a
    name, or a name longer than a file name may be, gives a run in outputs/runs/ with a cleaned name."""
    import os

    from runner.preflight.config import dir_name
    from runner.sweep import _job_label

    work = tmp_path / "work"
    work.mkdir()
    overrides = [o for o in tiny_overrides if not o.startswith("model.short_name")] + ["trainer.max_steps=1", name]
    env = {**os.environ, "GLUE_DIR": str(glue_dir), "HOME": str(tmp_path)}
    proc = runner_processes.run(overrides, cwd=work, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = list((work / "outputs" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "results.json").is_file()
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists() and not (work / "b").exists()
    assert len(runs[0].name) < 160 and "/" not in _job_label([name]) and ".." not in dir_name("../..")


def _copy_glue_mrpc(glue_dir, target):
    (target / "MRPC").mkdir(parents=True)
    for f in (glue_dir / "MRPC").iterdir():
        (target / "MRPC" / f.name).write_bytes(f.read_bytes())
    return target


def test_a_resume_refuses_changed_data_or_weights_in_one_line(tiny_overrides, tiny_model_dir, glue_dir, tmp_path,
                                                               monkeypatch, capsys):
    """A resume proves it continues the same experiment (issue 38, rule 2): the checkpoint's fingerprints of the
    data as read and of the base weights; a change refuses in one line naming it, resume_accept_changes=true
    continues and records what it accepted."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    glue = _copy_glue_mrpc(glue_dir, tmp_path / "glue")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    base = [o for o in tiny_overrides if not o.startswith(("task.data_dir", "model.name_or_path", "trainer.epochs"))] + [
        f"task.data_dir={glue}", f"model.name_or_path={model}", "trainer.epochs=2", "trainer.checkpoint_every_steps=4"]
    out = tmp_path / "run"
    _interrupted_run(base, out, monkeypatch, at=6)
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["fingerprint"]["world_size"] == 1 and meta["fingerprint"]["data"].startswith("sha256:")

    train = glue / "MRPC" / "train.tsv"
    original = train.read_text()
    header, *rows = original.splitlines()
    train.write_text("\n".join([header, *rows[1:65], rows[0], *rows[65:]]) + "\n")  # the first 64 reordered
    code, err = _exit_code(compose([*base, "resume=true"], out), capsys)
    assert code == 2 and "since the checkpoint the data as read changed" in err and "resume_accept_changes=true" in err
    train.write_text(original)

    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
              str(model / "model.safetensors"), metadata={"format": "pt"})
    code, err = _exit_code(compose([*base, "resume=true"], out), capsys)
    assert code == 2 and "since the checkpoint the base model's weights changed" in err

    resumed = run(compose([*base, "resume=true", "resume_accept_changes=true"], out))
    assert resumed["status"] == "completed" and resumed["fingerprint"]["resume_accepted_changes"] == ["weights"]


def test_the_process_layout_is_part_of_the_experiment():
    from runner.preflight.errors import ConfigError
    from runner.runs import check_same_experiment

    saved = {"weights": "sha256:a", "data": "sha256:b", "world_size": 1, "effective_batch": 16}
    assert check_same_experiment(saved, dict(saved), accept=False) == []
    assert check_same_experiment(None, dict(saved), accept=False) == []  # a checkpoint from before fingerprints
    doubled = {**saved, "world_size": 2, "effective_batch": 32}
    with pytest.raises(ConfigError, match=r"the number of processes \(1 -> 2\); the effective batch .* \(16 -> 32\) changed"):
        check_same_experiment(saved, doubled, accept=False)
    assert check_same_experiment(saved, doubled, accept=True) == ["world_size", "effective_batch"]
