"""A checkpoint write killed at any instant leaves a resumable run (runner/checkpoint.py).

Every file-system step of the save at step 8 (each mkdir, rename, delete, the state and meta.json writes)
is a kill point: the run dies there, as under SIGKILL (a BaseException no handler catches, deletes half
done), then resumes. Each resume continues from the newest complete checkpoint, reaches the
uninterrupted run's losses, and leaves no partial folder behind. A full disk while saving exits 7 in one
line naming the resume point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import compose, read_steps

from runner import checkpoint
from runner.app import execute
from runner.train import run

pytestmark = pytest.mark.slow


class Killed(BaseException):
    """SIGKILL: nothing catches it (except BaseException handlers that only record and re-raise)."""


@pytest.fixture
def common(tiny_overrides):
    """4 steps per epoch, 3 epochs; a checkpoint every 4 steps."""
    return [o for o in tiny_overrides if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=3", "trainer.checkpoint_every_steps=4", "trainer.log_every_steps=1", "trainer.lr=5e-3"]


class KillSwitch:
    """Counts the file-system steps of the save at ``step`` and kills the run at step number ``at``."""

    def __init__(self, monkeypatch, step: int, at: int | None):
        self.step, self.at, self.count, self.active = step, at, 0, False
        original_save, original_rename, original_mkdir = checkpoint.save, Path.rename, Path.mkdir
        original_rmtree, original_write = shutil.rmtree, checkpoint.atomic_write_json
        switch = self

        def save(accelerator, output_dir, meta, keep=None):
            switch.active = meta.get("global_step") == switch.step
            try:
                return original_save(accelerator, output_dir, meta, keep)
            finally:
                switch.active = False

        def rename(path, target):
            switch.tick(f"rename {path.name} -> {Path(target).name}")
            return original_rename(path, target)

        def mkdir(path, *args, **kwargs):
            if path.name.startswith(".checkpoint"):
                switch.tick(f"mkdir {path.name}")
            return original_mkdir(path, *args, **kwargs)

        def rmtree(path, *args, **kwargs):
            if switch.hit(f"rmtree {Path(path).name}"):  # killed half way through the delete
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                for f in files[: len(files) // 2]:
                    f.unlink()
                raise Killed(f"killed deleting {path}")
            return original_rmtree(path, *args, **kwargs)

        def write(path, data):
            switch.tick(f"write {Path(path).name}")
            return original_write(path, data)

        monkeypatch.setattr(checkpoint, "save", save)
        monkeypatch.setattr(Path, "rename", rename)
        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
        monkeypatch.setattr(checkpoint, "atomic_write_json", write)
        self.steps: list[str] = []

    def hit(self, what: str) -> bool:
        if not self.active:
            return False
        self.count += 1
        self.steps.append(what)
        return self.count == self.at

    def tick(self, what: str) -> None:
        if self.hit(what):
            raise Killed(f"killed at {what}")


def _losses(out: Path) -> list[float]:
    return [s["loss"] for s in read_steps(out)]


def test_a_save_killed_at_any_step_resumes_from_the_newest_complete_checkpoint(common, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    with monkeypatch.context() as patch:  # count the save's steps on an uninterrupted run
        switch = KillSwitch(patch, step=8, at=None)
        run(compose(common, straight))
    expected, steps = _losses(straight), list(switch.steps)
    assert len(steps) >= 6 and any(s.startswith("rename checkpoint") for s in steps), steps
    for at in range(1, len(steps) + 1):
        out = tmp_path / f"killed-{at}"
        with monkeypatch.context() as patch:
            KillSwitch(patch, step=8, at=at)
            with pytest.raises(Killed):
                run(compose(common, out))
        newest = checkpoint.complete_checkpoint(out)
        step = json.loads((newest / "meta.json").read_text())["global_step"]
        assert step in (4, 8), (at, steps[at - 1], newest)
        resumed = run(compose([*common, "resume=true"], out))
        assert resumed["status"] == "completed", (at, steps[at - 1])
        assert _losses(out) == pytest.approx(expected, rel=1e-6), (at, steps[at - 1])
        left = sorted(p.name for p in out.iterdir() if p.name.startswith(".checkpoint"))
        assert left == [], (at, steps[at - 1], left)  # every leftover cleaned by the resumed run's saves


def test_a_stale_old_checkpoint_beside_the_checkpoint_does_not_stop_a_resume(common, tmp_path, monkeypatch):
    """The reported case: a kill after the new checkpoint was renamed in, before the old one was deleted."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        KillSwitch(patch, step=8, at=10**6)  # count only
        patch.setattr("runner.methods.TrainingMethod.on_step_end", _crash_at_step(6))
        with pytest.raises(RuntimeError, match="crash at step 6"):
            run(compose(common, out))
    shutil.copytree(out / "checkpoint", out / ".checkpoint.old")
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 12
    assert not (out / ".checkpoint.old").exists()


def _crash_at_step(at: int):
    from runner.methods import StepUpdate

    def crash(self, ctx, step):
        if step == at:
            raise RuntimeError(f"crash at step {at}")
        return StepUpdate()

    return crash


def test_a_full_disk_while_saving_exits_7_in_one_line_naming_the_resume_point(common, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    from accelerate import Accelerator

    calls = {"n": 0}
    real = Accelerator.save_state

    def full_disk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the save at step 8; the one at step 4 is complete
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4000")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        execute(compose(common, out))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 7 and len(err) == 1, err
    assert "no space left while writing the checkpoint" in err[0] and "step 4" in err[0], err[0]
    record = json.loads((out / "results.json").read_text())
    assert record["status"] != "running" and record.get("checkpoint_step") == 4
    monkeypatch.undo()
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["steps"]["total"] == 12
