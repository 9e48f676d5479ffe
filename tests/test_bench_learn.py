"""scripts/bench_learn.py: the plan of sweeps, the table from real results files."""

from __future__ import annotations

import json

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_learn")


def test_plan_runs_seed_by_seed_regression_first(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "1", "2", "--regression-seeds", "1"])
    plan = [(d.name, o) for d, o in bench.planned_sweeps(args)]
    assert [name for name, _ in plan] == ["demo-overlap-s1", "lora-s1", "full-s1", "lora-s2", "full-s2"]
    lora = dict(o.split("=", 1) for o in plan[1][1])
    assert lora["model.pooling"] == "mean,cls" and lora["task"] == "glue/mrpc,glue/rte" and lora["method"] == "adapter"
    assert lora["trainer.count_flops"] == "false"
    demo = dict(o.split("=", 1) for o in plan[0][1])
    assert demo["experiment"] == "demo" and demo["task"] == "glue/stsb" and demo["task.data_dir"].endswith("overlap-glue")
    # one pooling: its own dir (continuing the both-poolings sweep would be refused, and run nothing new)
    one = bench.parse_args(["--out", str(tmp_path), "--seeds", "2", "--regression-seeds", "--recipes", "lora", "--poolings", "mean"])
    assert [d.name for d, _ in bench.planned_sweeps(one)] == ["lora-s2-mean"]


def _results(task, seed, acc, f1, pooling, trivial):
    return {"status": "completed", "task": task, "seed": seed, "main_metric": "accuracy",
            "metrics": {"accuracy": acc, "f1": f1}, "head": {"pooling": pooling},
            "learning": {"trivial_metrics": trivial}, "time": {"train_s": 100.0}}


def test_table_means_over_seeds_and_lora_gap_to_full(bench, tmp_path):
    trivial = {"accuracy": 0.684, "f1": 0.812}
    runs = {("lora", 1): (0.80, 0.86), ("lora", 2): (0.82, 0.88), ("full", 1): (0.83, 0.88), ("full", 2): (0.85, 0.90)}
    for (recipe, seed), (acc, f1) in runs.items():
        d = tmp_path / f"{recipe}-s{seed}" / f"0_mrpc-minilm-x-s{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_results("mrpc", seed, acc, f1, "mean", trivial)))
    failed = tmp_path / "lora-s3" / "0_mrpc"
    failed.mkdir(parents=True)
    (failed / "results.json").write_text(json.dumps({"status": "failed"}))  # not counted
    table = bench.summarize(bench.collect(tmp_path))
    lora = next(e for e in table if e["recipe"] == "lora")
    assert lora["n"] == 2 and lora["accuracy"]["mean"] == pytest.approx(81.0) and lora["accuracy"]["trivial"] == pytest.approx(68.4)
    assert lora["gap_to_full_points"] == pytest.approx(-3.0)
    text = bench.markdown(table)
    assert "| mrpc | lora | mean | - | - | 2 (1,2) | accuracy 81.00 ± 1.41 | 68.40 |" in text


def test_a_grid_of_learning_rates_and_epochs_is_swept_and_tabulated_per_setting(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path), "--tasks", "rte", "--recipes", "full", "--poolings", "mean",
                             "--seeds", "1", "--regression-seeds", "--lrs", "2e-5", "1e-4", "--epochs", "3", "10"])
    ((sweep_dir, overrides),) = bench.planned_sweeps(args)
    o = dict(x.split("=", 1) for x in overrides)
    assert sweep_dir.name == "full-s1-mean" and o["trainer.lr"] == "2e-05,0.0001" and o["trainer.epochs"] == "3,10"
    trivial = {"accuracy": 0.527}
    for i, (lr, epochs, acc) in enumerate([(2e-5, 3, 0.55), (1e-4, 3, 0.58), (2e-5, 10, 0.57), (1e-4, 10, 0.60)]):
        d = sweep_dir / f"{i}_rte-minilm-full-s1"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(_results("rte", 1, acc, None, "mean", trivial)))
        (d / "config.yaml").write_text(f"trainer:\n  lr: {lr}\n  epochs: {epochs}\n")
    table = bench.summarize(bench.collect(tmp_path))
    assert [(e["lr"], e["epochs"], round(e["accuracy"]["mean"], 2)) for e in table] == [
        (2e-5, 3, 55.0), (2e-5, 10, 57.0), (1e-4, 3, 58.0), (1e-4, 10, 60.0)]
    assert "| rte | full | mean | 0.0001 | 10 | 1 (1) | accuracy 60.00 ± 0.00 | 52.70 |" in bench.markdown(table)
