"""The SAFE benchmark's table from a sweep dir: seeds grouped per task and method, SAFE/baseline ratios, targets."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import load_script


def _bench():
    return load_script("bench_safe")


def _write_run(d, task, method, seed, acc, saved, flops, train_s, status="completed", policy="safe", safe=None):
    d.mkdir(parents=True)
    r = {"status": status, "task": task, "method": method, "seed": seed, "main_metric": "accuracy",
         "metrics": {"accuracy": acc}, "memory": {"saved_for_backward_mean_bytes": saved, "saved_for_backward_peak_bytes": 2 * saved},
         "flops": {"train_total": flops}, "time": {"train_s": train_s, "step_mean_s": 1.0}, "steps": {"total": 100}}
    if method == "safe":
        r["method_report"] = {"policy": policy, "n_frozen": 5, "last_freeze_step": 30,
                              "memory": {"saved_for_backward_mean_after_last_freeze_bytes": saved / 4}}
    (d / "results.json").write_text(json.dumps(r))
    config = {
        "model": {"short_name": "minilm"}, "task": {"max_train_samples": None}, "method": {"name": method},
        "adapter": {"name": "lora", "r": 8, "target_modules": ["query", "value"]},
        "trainer": {"lr": 1e-3, "batch_size": 32, "max_seq_length": 128, "epochs": 3, "max_steps": None,
                    "group_by_length": True}}
    if method == "safe":
        config["safe"] = {"importance": "own", "threshold": 0.5, "t_w": 0.3, "t_f": 0.8, "schedule_unit": "fraction",
                          "interval": 10, "policy": policy, "seed": seed, **(safe or {})}
    (d / "config.yaml").write_text(yaml.safe_dump(config))


def test_table_from_a_sweep_dir(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed, shift in ((1, 0.0), (2, 0.02)):
        _write_run(sweep / f"a{seed}", "mrpc", "adapter", seed, 0.80 + shift, 1e9, 100e12, 200.0)
        _write_run(sweep / f"s{seed}", "mrpc", "safe", seed, 0.798 + shift, 0.3e9, 65e12, 150.0)
    _write_run(sweep / "r1", "mrpc", "safe", 1, 0.5, 0.3e9, 65e12, 150.0, policy="random")  # not asked for: ignored
    _write_run(sweep / "f3", "mrpc", "adapter", 3, 0.1, 1e9, 100e12, 200.0, status="failed")  # not completed: ignored
    _write_run(sweep / ".retired" / "a1.1", "mrpc", "adapter", 1, 0.1, 1e9, 100e12, 200.0)  # superseded attempt: ignored
    bench = _bench()
    assert bench.main(["--from-sweep", str(sweep)]) == 0
    summary = json.loads((sweep / "bench_safe" / "summary.json").read_text())
    safe = summary["mrpc"]["safe"]
    assert summary["mrpc"]["adapter"]["n"] == 2 and safe["n"] == 2
    assert summary["mrpc"]["adapter"]["metric_mean"] == pytest.approx(81.0)
    assert safe["metric_drop_points"] == pytest.approx(0.2)
    assert safe["ratios"] == pytest.approx({"mean_memory": 0.3, "peak_memory": 0.3, "flops": 0.65, "wall_time": 0.75})
    assert safe["targets_met"] == {"mean_memory": True, "peak_memory": None, "flops": True, "wall_time": True,
                                   "metric": True}
    out = capsys.readouterr().out
    assert ("minilm + lora (r8, query/value), lr 0.001, batch 32, max length 128, 3 epochs, train cap none, "
            "length-grouped batches; SAFE: importance own, T_final 0.5, t_w 0.3, t_f 0.8 (fraction), every 10 steps; "
            "seeds [1, 2]") in out  # read from the runs' own configs
    assert "| safe | 0.300 ✓ | 0.300 | 0.650 ✓ | 0.750 ✓ | -0.20 ✓ | - | - | 1, 2 |" in out  # no steps.jsonl: no step ratio
    assert "rte" not in summary  # no runs for it


def test_from_sweep_needs_a_folder(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        _bench().main(["--from-sweep", str(tmp_path / "nope")])


def test_targets_are_options(tmp_path, capsys):
    """The depth benchmark checks its own issue's targets; 'none' reports a ratio without a mark."""
    sweep = tmp_path / "sweep"
    _write_run(sweep / "a1", "mrpc", "adapter", 1, 0.80, 1e9, 100e12, 200.0)
    _write_run(sweep / "s1", "mrpc", "safe", 1, 0.80, 0.58e9, 80e12, 150.0)
    bench = _bench()
    assert bench.main(["--from-sweep", str(sweep), "--target-mean-memory", "0.6", "--target-flops", "0.75",
                       "--target-wall-time", "none"]) == 0
    out = capsys.readouterr().out
    assert ("| method / adapter | mean memory (≤0.6) | peak memory | FLOPs (≤0.75) | wall time | metric Δ points (≥ -0.5) | "
            "step FLOPs after last freeze | probe FLOPs | paired seeds |") in out
    assert "| safe | 0.580 ✓ | 0.580 | 0.800 ✗ | 0.750 | +0.00 ✓ | - | - | 1 |" in out
    safe = json.loads((sweep / "bench_safe" / "summary.json").read_text())["mrpc"]["safe"]
    assert safe["targets_met"] == {"mean_memory": True, "peak_memory": None, "flops": False, "wall_time": None,
                                   "metric": True}
    # budget_mode's target is on the peak, within 1 point (bench_depth's budget phase)
    assert bench.main(["--from-sweep", str(sweep), "--target-peak-memory", "0.5", "--target-metric-drop", "1",
                       "--target-mean-memory", "none", "--target-flops", "none", "--target-wall-time", "none"]) == 0
    out = capsys.readouterr().out
    assert "| method / adapter | mean memory | peak memory (≤0.5) | FLOPs | wall time | metric Δ points (≥ -1) |" in out
    assert "| safe | 0.580 | 0.580 ✗ | 0.800 | 0.750 | +0.00 ✓ | - | - | 1 |" in out
    with pytest.raises(SystemExit):
        bench.parse_args(["--target-flops", "three quarters"])


def test_all_seeds_tables_every_seed_found(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (1, 2, 7):
        _write_run(sweep / f"seed{seed}" / "a", "mrpc", "adapter", seed, 0.80, 1e9, 100e12, 200.0)
    bench = _bench()
    assert bench.main(["--from-sweep", str(sweep), "--seeds", "1"]) == 0
    assert json.loads((sweep / "bench_safe" / "summary.json").read_text())["mrpc"]["adapter"]["n"] == 1
    assert bench.main(["--from-sweep", str(sweep), "--all-seeds"]) == 0
    assert json.loads((sweep / "bench_safe" / "summary.json").read_text())["mrpc"]["adapter"]["n"] == 3


def _write_steps(d, flops, method_flops=None, padded=None):
    rows = [{"step": i + 1, "flops": f, "padded_tokens": (padded or [64] * len(flops))[i],
             **({"method_flops": method_flops[i]} if method_flops and method_flops[i] else {})} for i, f in enumerate(flops)]
    (d / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_step_flops_after_the_last_freeze_pair_seeds_on_the_same_batches(tmp_path):
    """What a step costs once the final frozen set is in place, against LoRA's same batches, and the probes' share:
    the whole-run FLOPs ratio had that set been frozen from step 0 (the floor of any schedule with that set)."""
    sweep = tmp_path / "sweep"
    for seed in (1, 2):
        _write_run(sweep / f"a{seed}", "mrpc", "adapter", seed, 0.80, 1e9, 100e12, 200.0)
        _write_run(sweep / f"s{seed}", "mrpc", "safe", seed, 0.80, 0.5e9, 80e12, 150.0)  # last freeze at step 30
        _write_steps(sweep / f"a{seed}", [10.0] * 40)
    # seed 1: 10 per step until step 30, then 6 (seed 2: 4), a probe of 2 at steps 1 and 30
    _write_steps(sweep / "s1", [10.0] * 30 + [6.0] * 10, method_flops=[2.0] + [0.0] * 28 + [2.0] + [0.0] * 10)
    _write_steps(sweep / "s2", [10.0] * 30 + [4.0] * 10, method_flops=[2.0] + [0.0] * 39)
    bench = _bench()
    assert bench.main(["--from-sweep", str(sweep)]) == 0
    safe = json.loads((sweep / "bench_safe" / "summary.json").read_text())["mrpc"]["safe"]
    assert safe["step_flops"] == pytest.approx({"after_last_freeze": 0.5, "probe_share": (4 / 400 + 2 / 400) / 2,
                                                "paired_seeds": 2})
    # other batches (a different seed's order) are no pair: that seed is left out of the mean
    _write_steps(sweep / "a2", [10.0] * 40, padded=[64] * 39 + [32])
    assert bench.main(["--from-sweep", str(sweep)]) == 0
    safe = json.loads((sweep / "bench_safe" / "summary.json").read_text())["mrpc"]["safe"]
    assert safe["step_flops"] == pytest.approx({"after_last_freeze": 0.6, "probe_share": 0.01, "paired_seeds": 1})


def test_a_frontier_beside_the_lora_runs_rows_each_setting_over_its_paired_seeds(tmp_path, capsys):
    """The depth benchmark's frontier: SAFE at other settings in dirs of their own, tabled with the LoRA and
    default SAFE runs of another dir. Each setting is a row named by what differs from the defaults, and its
    ratios compare it with LoRA over the seeds both ran (LoRA has seeds 1-2, the setting only seed 1)."""
    lora, frontier = tmp_path / "safe_sst2", tmp_path / "frontier_sst2"
    _write_run(lora / "a1", "sst2", "adapter", 1, 0.90, 1e9, 100e12, 200.0)
    _write_run(lora / "a2", "sst2", "adapter", 2, 0.92, 3e9, 300e12, 600.0)
    defaults = {"t_f": 0.8, "threshold": 0.2, "interval": 20}
    for seed in (1, 2):
        _write_run(lora / f"s{seed}", "sst2", "safe", seed, 0.90, 0.8e9, 90e12, 180.0, safe=defaults)
    _write_run(frontier / "tf0.5" / "s1", "sst2", "safe", 1, 0.89, 0.5e9, 65e12, 150.0,
               safe={**defaults, "t_f": 0.5, "max_tokens": "***"})  # an older runner's mask: no setting of its own
    bench = _bench()
    assert bench.main(["--tasks", "sst2", "--all-seeds", "--from-sweep", str(lora), str(frontier), str(frontier / "tf0.5"),
                       "--out", str(tmp_path / "table")]) == 0
    summary = json.loads((tmp_path / "table" / "summary.json").read_text())["sst2"]
    assert set(summary) == {"adapter", "safe", "safe (t_f 0.5)"}
    assert summary["safe"]["ratio_seeds"] == [1, 2] and summary["safe"]["ratios"]["flops"] == pytest.approx(180 / 400)
    setting = summary["safe (t_f 0.5)"]
    assert setting["ratio_seeds"] == [1] and setting["n"] == 1  # found twice (two of the dirs hold it), counted once
    assert setting["ratios"] == pytest.approx({"mean_memory": 0.5, "peak_memory": 0.5, "flops": 0.65, "wall_time": 0.75})
    assert setting["metric_drop_points"] == pytest.approx(1.0)  # against LoRA's seed 1 (90), not its mean (91)
    assert "| safe (t_f 0.5) | 0.500 ✓ | 0.500 | 0.650 ✓ | 0.750 ✓ | -1.00 ✗ | - | - | 1 |" in capsys.readouterr().out
