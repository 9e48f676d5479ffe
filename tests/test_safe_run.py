"""method=safe end to end through the real Hydra config on a tiny BERT and real MRPC rows."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_cfg, read_steps, run_cfg, save_tiny_model_dir, single_thread  # noqa: F401

from runner.results import undeclared
from runner.safe import schedule

# 160 examples, batch 16: 10 steps per epoch, 20 steps in all; t_w at step 2, t_f at step 10.
COMMON = ["task=glue/mrpc", "task.max_train_samples=160", "trainer.epochs=2", "trainer.lr=5e-3",
          "safe.interval=2", "safe.t_w=0.1", "safe.t_f=0.5", "safe.probe_size=32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir):
    """Cache of finished runs by name, so tests share them."""
    cache = {}
    root = tmp_path_factory.mktemp("runs")

    def get(name, overrides):
        if name not in cache:
            out = root / name
            torch.set_num_threads(1)
            results = run_cfg(compose_cfg(overrides, out, model_dir))
            cache[name] = (results, read_steps(out), out)
        return cache[name]

    return get


def adapter_run(runs):
    return runs("adapter", ["method=adapter", *[o for o in COMMON if not o.startswith("safe.")]])


def safe_run(runs):
    # drift here; the default (own) runs in the random, bottleneck, own, resume and DDP tests
    return runs("safe", ["method=safe", *COMMON, "safe.threshold=1.0", "safe.importance=drift", "trainer.sharpness.enabled=true",
                         "trainer.sharpness.iters=5", "trainer.sharpness.batches=1"])


def test_safe_freezes_on_schedule_and_reports(runs):
    results, steps, out = safe_run(runs)
    report = results["method_report"]
    assert results["status"] == "completed" and results["method"] == "safe"
    assert report["policy"] == "safe" and report["n_adapters"] == 4
    assert report["schedule_steps"] == {"total": 20, "t_w": 2, "t_f": 10}
    assert report["schedule_warning"] is None  # 4 measurements can freeze: 4, 6, 8, 10
    # T_final = 1: every adapter but the most important one ends up frozen by t_f
    assert report["n_frozen"] == 3 and report["last_freeze_step"] <= 10
    measured = [step for step, _ in report["threshold"]]
    # only where it can freeze (threshold > 0): step 2 is t_w, T = 0 there, so no probe runs
    assert measured == [4, 6, 8, 10][: len(measured)] and measured[0] == 4
    assert all(t > 0 for _, t in report["threshold"])
    assert all(d["froze"] == d["below"] for d in report["decisions"])
    for step, t in report["threshold"]:
        assert t == pytest.approx(schedule.threshold(step / 20, 0.1, 0.5, 1.0))
    # importance entries are named: relative = importance / the top importance among the adapters measured at that step
    entries = [(layer, e) for layer, a in report["adapters"].items() for e in a["importance"]]
    assert entries and all(set(e) == {"step", "importance", "relative"} for _, e in entries)
    for step in {e["step"] for _, e in entries}:
        at_step = [e for _, e in entries if e["step"] == step]
        top = max(e["importance"] for e in at_step)
        assert all(e["relative"] == pytest.approx(e["importance"] / top) for e in at_step)
    for layer, a in report["adapters"].items():
        k = int(layer.removeprefix("layer"))
        if a["freeze_step"] is None:
            continue
        # frozen at a measurement where its importance / max was below the threshold
        at = {e["step"]: e["relative"] for e in a["importance"]}[a["freeze_step"]]
        assert at < schedule.threshold(a["freeze_step"] / 20, 0.1, 0.5, 1.0)
        assert k in report["merged_layers"]
    # per-step records: fraction frozen never decreases; trainable params drop with it
    fracs = [s["safe/frac_frozen"] for s in steps]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(0.75)
    assert steps[-1]["trainable_params"] < steps[0]["trainable_params"]
    assert steps[-1]["safe/optimizer_state_bytes"] < steps[0]["safe/optimizer_state_bytes"]
    mem = report["memory"]
    assert mem["optimizer_state_bytes_last_step"] < mem["optimizer_state_bytes_first_step"]
    assert mem["steps_after_last_freeze"] == 20 - report["last_freeze_step"]
    # the probe's FLOPs count as training compute
    assert report["overhead"]["probe_flops_total"] > 0
    probe_in_steps = sum(s.get("method_flops") or 0 for s in steps)
    assert results["flops"]["train_total"] == sum(s["flops"] for s in steps) + probe_in_steps
    assert (out / report["timeline_png"]).stat().st_size > 5000
    assert math.isfinite(results["sharpness"]["lambda_max"])
    assert results["sharpness"]["unmerged_for_measurement"] == 2 * 3  # query+value of 3 merged layers
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["method_report"]["n_frozen"] == 3
    assert undeclared(on_disk) == []  # sharpness included


def test_safe_matches_plain_adapter_tuning_until_the_first_freeze(runs):
    """The probe is read-only: SAFE's losses equal method=adapter's exactly until it freezes."""
    _, base_steps, _ = adapter_run(runs)
    results, safe_steps, _ = safe_run(runs)
    first = min(e["step"] for e in results["method_report"]["events"])
    for a, b in zip(base_steps[:first], safe_steps[:first]):
        assert a["loss"] == b["loss"] and a["saved_bytes"] == b["saved_bytes"]
    assert base_steps[first]["trainable_params"] > safe_steps[first]["trainable_params"]
    assert sum(s["flops"] for s in safe_steps[first:]) < sum(s["flops"] for s in base_steps[first:])


def test_static_baseline_freezes_lowest_k_before_the_first_step(runs):
    _, base_steps, _ = adapter_run(runs)
    results, steps, _ = runs("static", ["method=safe", "safe.policy=static", "safe.static_k=2", *COMMON])
    report = results["method_report"]
    assert report["policy"] == "static"
    assert {k: a["freeze_step"] for k, a in report["adapters"].items()} == {
        "layer0": 0, "layer1": 0, "layer2": None, "layer3": None}
    assert all(s["safe/frac_frozen"] == 0.5 for s in steps)
    # same batches as the baseline, fewer activations kept for backward at every step
    assert all(s["saved_bytes"] < b["saved_bytes"] for s, b in zip(steps, base_steps))


def test_random_baseline_freezes_as_many_as_safe_would(runs):
    results, _, _ = runs("random", ["method=safe", "safe.policy=random", *COMMON, "safe.threshold=1.0"])
    report = results["method_report"]
    assert report["policy"] == "random" and report["n_frozen"] == 3
    # every decision froze exactly as many adapters as were below the threshold (not necessarily those)
    assert all(len(d["froze"]) == len(d["below"]) for d in report["decisions"])
    assert sum(len(d["froze"]) for d in report["decisions"]) == 3


def test_policy_none_is_plain_adapter_tuning(runs):
    _, base_steps, _ = adapter_run(runs)
    results, steps, _ = runs("none", ["method=safe", "safe.policy=none", *[o for o in COMMON if not o.startswith("safe.")]])
    assert results["method_report"]["n_frozen"] == 0 and results["method_report"]["importance"] is None
    assert [s["loss"] for s in steps] == [s["loss"] for s in base_steps]


def test_safe_settings_without_method_safe_are_a_config_error(tmp_path, model_dir):
    from runner.preflight.errors import ConfigError
    from runner.preflight.validate import validate_config

    cfg = compose_cfg(["method=adapter", "+safe=default"], tmp_path, model_dir)
    with pytest.raises(ConfigError, match="safe settings need method=safe"):
        validate_config(cfg)
    cfg = compose_cfg(["method=safe", "safe.policy=static"], tmp_path, model_dir)
    with pytest.raises(ConfigError, match="static_k"):
        run_cfg(cfg)


def test_bottleneck_adapters_with_rbf_cka_on_layer_outputs(runs):
    """The other adapter type and the other importance options go through the same path (no merging)."""
    results, steps, _ = runs("bottleneck", ["method=safe", "adapter=bottleneck", *COMMON, "safe.threshold=1.0",
                                            "safe.kernel=rbf", "safe.representation=layer", "safe.max_tokens=256"])
    report = results["method_report"]
    assert report["n_adapters"] == 4 and report["n_frozen"] == 3 and report["merged_layers"] == []
    assert steps[-1]["trainable_params"] < steps[0]["trainable_params"]
    assert all(0.0 <= e["importance"] <= 1.0 for a in report["adapters"].values() for e in a["importance"])


def test_a_run_too_short_for_the_schedule_is_warned_about(runs, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="runner.safe.method"):
        results, _, _ = runs("short", ["method=safe", *COMMON, "trainer.max_steps=6"])
    warning = results["method_report"]["schedule_warning"]
    assert warning.startswith("SAFE's schedule gets only 2 importance measurement(s) that can freeze (steps [2, 3] of 6; "
                              "window 1-3, every 2 steps): too few")
    assert warning in caplog.text

    from runner.summary import run_summary

    assert f"  warning: {warning}" in run_summary(results, Path("/tmp"))


def test_fraction_units_report_the_window_in_steps_epochs_and_fractions(runs):
    results, _, _ = safe_run(runs)
    report = results["method_report"]
    assert report["schedule"] == {
        "unit": "fraction", "given": {"t_w": 0.1, "t_f": 0.5}, "total_steps": 20, "steps_per_epoch": 10,
        "total_epochs": 2.0, "steps": {"t_w": 2, "t_f": 10}, "epochs": pytest.approx({"t_w": 0.2, "t_f": 1.0}),
        "fractions": {"t_w": 0.1, "t_f": 0.5}}
    assert report["importance"]["kind"] == "drift" and report["config"]["importance"] == "drift"


def test_own_importance_in_epoch_units_with_gradient_accumulation(runs):
    """safe.importance=own trains and freezes on the schedule; t_w / t_f in epochs of optimizer steps:
    10 batches per epoch with grad_accum_steps=2 are 5 steps, 10 in all; t_w 0.2 epochs = step 1, t_f 1 epoch = step 5."""
    results, steps, _ = runs("own-epochs", [
        "method=safe", *[o for o in COMMON if not o.startswith(("safe.t_", "safe.interval"))], "trainer.grad_accum_steps=2",
        "safe.importance=own", "safe.schedule_unit=epoch", "safe.t_w=0.2", "safe.t_f=1", "safe.interval=1",
        "safe.threshold=1.0"])
    report = results["method_report"]
    assert results["status"] == "completed" and results["steps"]["per_epoch"] == 5
    assert report["importance"] == {"kind": "own", "representation": "adapted", "kernel": "linear",
                                    "score": "1 - mean CKA(representation with the layer's adapters, without them), same step and input"}
    assert report["schedule_steps"] == {"total": 10, "t_w": 1, "t_f": 5}
    assert report["schedule"]["unit"] == "epoch" and report["schedule"]["steps_per_epoch"] == 5
    assert report["schedule"]["epochs"] == pytest.approx({"t_w": 0.2, "t_f": 1.0})
    assert report["schedule"]["fractions"] == pytest.approx({"t_w": 0.1, "t_f": 0.5})
    assert report["schedule_warning"] is None  # decisions at steps 2, 3, 4, 5
    assert [step for step, _ in report["threshold"]] == [2, 3, 4, 5][: len(report["threshold"])]  # none at t_w (T = 0)
    for step, t in report["threshold"]:
        assert t == pytest.approx(schedule.threshold(step / 10, 0.1, 0.5, 1.0))
    assert report["n_frozen"] == 3 and report["last_freeze_step"] <= 5
    assert all(d["froze"] == d["below"] for d in report["decisions"])
    for a in report["adapters"].values():
        assert all(0.0 <= e["importance"] <= 1.0 for e in a["importance"])
        if a["freeze_step"] is not None:
            at = {e["step"]: e["relative"] for e in a["importance"]}[a["freeze_step"]]
            assert at < schedule.threshold(a["freeze_step"] / 10, 0.1, 0.5, 1.0)
    assert steps[-1]["safe/frac_frozen"] == pytest.approx(0.75) and len(steps) == 10


def test_epoch_windows_that_do_not_fit_the_run_fail_in_one_line(tmp_path, model_dir):
    from runner.preflight.errors import ConfigError
    from runner.preflight.validate import validate_config

    window = ["method=safe", *COMMON, "safe.schedule_unit=epoch", "safe.t_w=0.5", "safe.t_f=3"]
    with pytest.raises(ConfigError) as exc:  # trainer.epochs=2: known before anything loads
        validate_config(compose_cfg(window, tmp_path / "early", model_dir))
    assert str(exc.value) == "safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f <= 2 (the run's epochs), got t_w=0.5, t_f=3 epochs"
    # trainer.max_steps=6: the run's epochs (6 steps of 10 per epoch) are known once the data is loaded
    with pytest.raises(ConfigError) as exc:
        run_cfg(compose_cfg([*window, "safe.t_f=1", "trainer.max_steps=6"], tmp_path / "late", model_dir))
    assert str(exc.value) == ("safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f <= 0.6 (the run's epochs: "
                              "6 optimizer steps, 10 per epoch), got t_w=0.5, t_f=1 epochs")


class _FakeProbe:
    last_flops = 0

    def importance(self, active):
        return {k: (1.0 if k == 3 else 0.01 * (k + 1)) for k in active}  # layer 0 lowest, layer 3 most important


class _FakeFreezer:
    def __init__(self, active):
        self.active = list(active)


def _decider(policy: str, seed: int = 0):
    from runner.preflight.schema import SafeSettings
    from runner.safe.method import SafeMethod

    m = SafeMethod.__new__(SafeMethod)  # the real decision code, without a model to train
    m.policy, m.seed, m.total_steps = policy, seed, 100
    m.settings = SafeSettings(t_w=0.0, t_f=0.01, threshold=0.02, seed=seed)  # below: layer 0 only (0.01 < 0.02)
    m.window = schedule.window(0.0, 0.01, "fraction", 100, 100)  # what setup derives from them
    m.freezer, m.probe = _FakeFreezer(range(4)), _FakeProbe()
    return m


def test_random_picks_uniformly_among_the_active_adapters_not_safes_choice():
    safe, rand = _decider("safe"), _decider("random", seed=7)
    steps = range(10, 90)
    assert all(safe._decide(s)["freeze"] == [0] for s in steps)  # SAFE: the one adapter below the threshold
    picks = [rand._decide(s)["freeze"] for s in steps]
    assert all(len(p) == 1 for p in picks)  # as many as SAFE would freeze...
    counts = np.bincount([p[0] for p in picks], minlength=4)
    # ...chosen uniformly among all 4 active ones (80 draws: each ~20; SAFE's choice would give [80, 0, 0, 0])
    assert counts.min() >= 8 and counts[0] <= 35, counts
    assert [rand._decide(s)["freeze"] for s in steps] == picks  # seeded by (seed, step): a resume decides the same
    assert [_decider("random", seed=8)._decide(s)["freeze"] for s in steps] != picks


def test_budget_mode_splits_micro_batches_until_t_f_for_the_same_training_at_a_lower_peak(runs):
    """safe.budget_mode: until t_f every micro-batch runs as 2 chunks; with no dropout the losses match
    SAFE without it (same updates up to float error) and the bytes saved for backward at once are about
    halved while every adapter trains. After t_f a micro-batch runs whole only where that stays within
    the split phase's peak: here the adapter left training is a low one, which keeps the activations of
    every layer above it, so a whole micro-batch would not fit and every one stays split."""
    common = ["method=safe", *COMMON, "safe.threshold=1.0", "adapter.dropout=0", "trainer.activations_check_every=1",
              "trainer.max_seq_length=128"]
    _, plain, _ = runs("safe-no-dropout", common)
    results, budget, _ = runs("safe-budget", [*common, "safe.budget_mode=true", "safe.budget_splits=2"])
    report = results["method_report"]["budget_mode"]
    assert [s["loss"] for s in budget] == pytest.approx([s["loss"] for s in plain], rel=1e-4)
    for a, b in zip(budget[:10], plain[:10]):
        assert a["chunks"] == 2 and b["chunks"] == 1 and a["saved_bytes"] <= 0.6 * b["saved_bytes"]
    assert results["method_report"]["n_frozen"] == 3
    assert report["splits"] == 2 and report["until_step"] == 10 and report["steps_after"] == 10
    assert report["steps_after_split"] == 10 and [s["chunks"] for s in budget[10:]] == [2] * 10
    for a, b in zip(budget[10:], plain[10:]):  # each would have saved more whole than the peak
        assert 2 * a["saved_bytes"] > report["peak_until_bytes"] and a["saved_bytes"] < b["saved_bytes"]
    assert report["peak_after_bytes"] <= report["peak_until_bytes"] == max(s["saved_bytes"] for s in budget)
    assert report["peak_until_bytes"] <= 0.6 * max(s["saved_bytes"] for s in plain)


def test_budget_mode_runs_micro_batches_whole_after_t_f_where_they_fit_the_peak(runs, monkeypatch):
    """With the lower adapters frozen (scores rising with depth, so T_final 1.0 leaves only layer 3), a
    whole micro-batch after t_f keeps less than a split one did while everything trained: every step
    whose bytes the meter can predict runs whole, and none goes above the split phase's peak."""
    from runner.safe.importance import RepresentationProbe

    monkeypatch.setattr(RepresentationProbe, "importance", lambda self, active: {k: 0.01 * (k + 1) for k in active})
    common = ["method=safe", *COMMON, "safe.threshold=1.0", "adapter.dropout=0", "trainer.max_seq_length=128"]
    _, plain, _ = runs("safe-depth-no-dropout", common)
    results, budget, _ = runs("safe-depth-budget", [*common, "safe.budget_mode=true"])
    report = results["method_report"]
    assert [k for k, v in report["adapters"].items() if v["freeze_step"] is None] == ["layer3"]
    assert [s["loss"] for s in budget] == pytest.approx([s["loss"] for s in plain], rel=1e-4)
    whole = [s for s in budget[10:] if s["chunks"] == 1]
    # the first chunks after the last freeze teach the meter their lengths; the rest run whole
    assert report["budget_mode"]["steps_after_split"] == 10 - len(whole) and len(whole) >= 5
    for s in whole:
        assert s["saved_bytes"] == plain[s["step"] - 1]["saved_bytes"]
    assert report["budget_mode"]["peak_after_bytes"] <= report["budget_mode"]["peak_until_bytes"]
