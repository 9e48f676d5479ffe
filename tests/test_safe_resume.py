"""The freezing state is part of the checkpoint: an interrupted SAFE run resumes with it (compared
through the frozen adapters' weights), and with budget_mode's splits (compared through the losses)."""

import json

import pytest
import torch

from helpers import compose_cfg, read_steps, run_cfg, save_tiny_model_dir, single_thread  # noqa: F401

from safetensors.torch import load_file

from runner.adapters import layer_index
from runner.safe.method import SafeMethod

OVERRIDES = ["method=safe", "task=glue/mrpc", "task.max_train_samples=160", "trainer.epochs=2", "trainer.lr=5e-3",
             "safe.interval=2", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0", "safe.probe_size=32",
             "trainer.checkpoint_every_steps=8", "trainer.eval_every_steps=100"]


class Interrupted(Exception):
    pass


def crash_at(monkeypatch, crash_step: int, overrides, out, model_dir) -> None:
    """Run into ``out`` and crash at ``crash_step`` (after the checkpoint before it), as a killed job would."""
    original = SafeMethod.on_step_end

    def crash(self, ctx, step):
        if step == crash_step:
            raise Interrupted(f"simulated crash at step {crash_step}")
        return original(self, ctx, step)

    with monkeypatch.context() as patch:
        patch.setattr(SafeMethod, "on_step_end", crash)
        with pytest.raises(Interrupted):
            run_cfg(compose_cfg(overrides, out, model_dir))


def test_interrupted_safe_run_resumes_with_its_frozen_adapters(tmp_path, monkeypatch):
    model_dir = save_tiny_model_dir(tmp_path / "model")
    torch.set_num_threads(1)
    straight = run_cfg(compose_cfg(OVERRIDES, tmp_path / "straight", model_dir))
    straight_steps = read_steps(tmp_path / "straight")
    frozen_by_8 = {k: a["freeze_step"] for k, a in straight["method_report"]["adapters"].items()
                   if a["freeze_step"] is not None and a["freeze_step"] <= 8}
    assert frozen_by_8, "the test needs a freezing event before the checkpoint at step 8"

    out = tmp_path / "resumed"
    crash_at(monkeypatch, 9, OVERRIDES, out, model_dir)
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["global_step"] == 8
    assert {f"layer{k}": v for k, v in meta["method_state"]["frozen"].items()} == frozen_by_8

    at_8 = load_file(str(out / "checkpoint" / "model.safetensors"))
    resumed = run_cfg(compose_cfg([*OVERRIDES, "resume=true"], out, model_dir))
    resumed_steps = read_steps(out)
    assert resumed["status"] == "completed" and [s["step"] for s in resumed_steps] == list(range(1, 21))
    # the adapters frozen before the checkpoint stay frozen from the first resumed step on ...
    report = resumed["method_report"]
    for layer, step in frozen_by_8.items():
        assert report["adapters"][layer]["freeze_step"] == step
    assert resumed_steps[8]["trainable_params"] <= straight_steps[7]["trainable_params"]
    # ... their LoRA weights and merged base weights are exactly those of the checkpoint: no update
    # after resuming, and no second merge (the checkpoint's base weights are already merged)
    at_16 = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["global_step"] == 16
    layers = [int(k.removeprefix("layer")) for k in frozen_by_8]
    names = [n for n in at_8 if layer_index(n) in layers and ("lora_" in n or "base_layer.weight" in n)]
    assert any("base_layer.weight" in n for n in names) and any("lora_" in n for n in names)
    for n in names:
        assert torch.equal(at_8[n], at_16[n]), n
    live = [n for n in at_8 if "lora_" in n and layer_index(n) not in layers
            and report["adapters"][f"layer{layer_index(n)}"]["freeze_step"] in (None, 17, 18, 19, 20)]
    assert all(not torch.equal(at_8[n], at_16[n]) for n in live)  # the others kept training


def test_a_budget_mode_run_resumed_after_t_f_splits_its_micro_batches_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """safe.budget_mode after t_f runs a micro-batch whole only where the step meter predicts it fits the
    peak; the meter's learned bytes travel in the checkpoint, so a run resumed after t_f makes the same
    choices, and with dropout on (whole and split draw other masks) reaches the same losses."""
    from runner.safe.importance import RepresentationProbe

    # scores rising with depth: T_final 1.0 leaves layer 3 alone, and whole micro-batches fit after t_f
    monkeypatch.setattr(RepresentationProbe, "importance", lambda self, active: {k: 0.01 * (k + 1) for k in active})
    overrides = [o for o in OVERRIDES if not o.startswith("trainer.checkpoint_every_steps")]
    overrides += ["safe.budget_mode=true", "trainer.max_seq_length=128", "trainer.checkpoint_every_steps=15"]
    model_dir = save_tiny_model_dir(tmp_path / "model")
    torch.set_num_threads(1)
    run_cfg(compose_cfg(overrides, tmp_path / "straight", model_dir))
    straight = read_steps(tmp_path / "straight")
    assert [s["chunks"] for s in straight[15:]] == [1] * 5  # whole by then: the meter had learned their bytes

    out = tmp_path / "resumed"
    crash_at(monkeypatch, 16, overrides, out, model_dir)
    run_cfg(compose_cfg([*overrides, "resume=true"], out, model_dir))
    resumed = read_steps(out)
    assert [s["chunks"] for s in resumed] == [s["chunks"] for s in straight]
    assert [s["saved_bytes"] for s in resumed] == [s["saved_bytes"] for s in straight]
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in straight], abs=1e-6)
