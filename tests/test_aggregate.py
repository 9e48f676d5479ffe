"""Aggregation: synthetic results.json with known numbers give exactly the expected tables; real runs too."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from runner.aggregate import (build_report, collect, efficiency_figure, freeze_steps, main, pruning_entries, pruning_figure,
                              trivial_level)

MiB = 2**20


def write_run(root: Path, name: str, *, task, method, seed, acc=None, mem_mib=None, flops=None, train_s=None,
              status="completed", adapter="lora", model="m", extra=None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    results = {"status": status, "run_name": name, "task": task, "model": model, "method": method, "adapter": adapter,
               "seed": seed, "main_metric": "accuracy"}
    if status == "completed":
        results.update({
            "metrics": {"accuracy": acc, "f1": 0.5},
            "memory": {"saved_for_backward_peak_bytes": int(mem_mib * MiB / 2), "saved_for_backward_mean_bytes": mem_mib * MiB / 4,
                       "state_plus_saved_peak_bytes": int(mem_mib * MiB), "param_bytes": 1000},
            "flops": {"train_total": flops, "eval_per_pass": 1.0},
            "time": {"train_s": train_s},
            "steps": {"total": 100},
            "eval_history": [{"step": 100, "accuracy": acc}],
        })
    else:
        results.update({"error": "RuntimeError: boom" if status == "failed" else "RunInterrupted: SIGTERM", "step": 10})
    results.update(extra or {})
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(f"prune:\n  name: {'hies' if extra and 'pruning' in extra else 'none'}\nseed: {seed}\n")
    return run


def hies_section(unpruned, values):
    """HIES-shaped pruning section: values[(criterion, ratio)] = (metric, stability)."""
    return {"pruning": {"criterion": "hies", "ratio": 0.5, "unpruned": {"main_metric": unpruned},
                        "results": [{"criterion": c, "ratio": r, "main_metric": m, "stability": s, "flops_ratio": 1 - r,
                                     "params_ratio": 1 - r / 2, "metrics": {"accuracy": m}} for (c, r), (m, s) in values.items()]}}


def learning_section(trivial, prediction=1):
    """What runner.curves writes: the main metric of predicting ``prediction`` for every eval example."""
    return {"learning": {"main_metric": "accuracy", "trivial": trivial, "trivial_prediction": prediction, "above_trivial": True}}


def write_prune_job(root: Path, name: str, source: Path, *, task, seed, unpruned, values, model="m") -> Path:
    """A pruning job on a saved run (prune.from_run): no training measurements, the source run's path."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    results = {"status": "completed", "task": task, "model": model, "method": "prune:hies", "main_metric": "accuracy",
               "metrics": {"accuracy": unpruned}, "source_run": str(source),
               "source": {"method": "adapter", "adapter": "lora", "seed": seed}, **hies_section(unpruned, values)}
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("prune:\n  name: hies\nseed: 42\n")
    return run


def safe_section(freeze):
    return {"method_report": {"adapters": {f"layer{i}": {"freeze_step": s} for i, s in enumerate(freeze)},
                              "schedule_steps": {"total": 100}}}


@pytest.fixture
def synthetic(tmp_path) -> Path:
    root = tmp_path / "sweep"
    n = 0

    def add(**kw):
        nonlocal n
        write_run(root, f"{n}_{kw['task']}-{kw['method']}-s{kw['seed']}", **kw)
        n += 1

    for seed, acc, t in zip((1, 2, 3), (0.80, 0.82, 0.84), (10, 12, 14)):
        add(task="mrpc", method="adapter", seed=seed, acc=acc, mem_mib=100, flops=1e12, train_s=t,
            extra=hies_section(acc, {("hies", 0.1): (acc - 0.01, 0.99), ("hies", 0.5): (acc - 0.10, 0.90),
                                     ("random", 0.5): (0.50 + seed / 100, 0.6 + seed / 10)}))
    for seed, acc in zip((1, 2, 3), (0.81, 0.83, 0.85)):
        add(task="mrpc", method="safe", seed=seed, acc=acc, mem_mib=60, flops=0.5e12, train_s=6, extra=safe_section([20, 50, None]))
    for seed, acc in zip((1, 2, 3), (0.60, 0.62, 0.64)):
        add(task="rte", method="adapter", seed=seed, acc=acc, mem_mib=200, flops=2e12, train_s=20)
    for seed, acc in zip((1, 2), (0.61, 0.63)):
        add(task="rte", method="safe", seed=seed, acc=acc, mem_mib=100, flops=1e12, train_s=10, extra=safe_section([30, 40, 90]))
    add(task="rte", method="safe", seed=3, status="failed")
    add(task="rte", method="safe", seed=4, status="interrupted")
    (root / "99_killed" / ".hydra").mkdir(parents=True)  # a job killed before writing results.json
    # a superseded attempt kept aside by the sweep runner: never read
    write_run(root / ".retired", "0_mrpc-adapter-s1.1", task="mrpc", method="adapter", seed=1, acc=0.0, mem_mib=1, flops=1, train_s=1)
    return root


def test_pruning_and_freeze_keys_are_read_in_one_place():
    entries, ref = pruning_entries(hies_section(0.8, {("hies", 0.5): (0.7, 0.9)}))
    assert entries == [{"criterion": "hies", "ratio": 0.5, "metric": 0.7, "stability": 0.9, "flops_ratio": 0.5, "params_ratio": 0.75,
                        "f1": None}]  # the paper's MRPC metric, None where the task has no F1
    assert ref == {"metric": 0.8, "f1": None}
    mrpc = hies_section(0.8, {("hies", 0.5): (0.7, 0.9)})
    mrpc["pruning"]["results"][0]["metrics"]["f1"] = 0.75
    mrpc["pruning"]["unpruned"]["metrics"] = {"accuracy": 0.8, "f1": 0.85}
    entries, ref = pruning_entries(mrpc)
    assert entries[0]["f1"] == 0.75 and ref == {"metric": 0.8, "f1": 0.85}
    assert pruning_entries({"pruning": [{"criterion": "his", "ratio": 0.2, "metric": 0.6, "stability": 0.8}]})[0][0]["metric"] == 0.6
    assert pruning_entries({}) == ([], None)
    assert freeze_steps({**safe_section([20, None]), "steps": {"total": 80}}) == ({"layer0": 20, "layer1": None}, 80)
    assert freeze_steps({"method_report": {}}) is None
    assert trivial_level(learning_section(0.6838)) == {"trivial": 0.6838, "trivial_what": "majority class"}
    assert trivial_level(learning_section(0.0, prediction=2.7)) == {"trivial": 0.0, "trivial_what": "constant prediction"}
    assert trivial_level({"source_run": "/nowhere"}) is None and trivial_level({}) is None  # old or moved runs: unknown


def test_synthetic_results_give_the_expected_tables(synthetic, tmp_path):
    report = build_report([synthetic], tmp_path / "report", baseline="adapter")
    runs, stats = report["runs"], report["stats"]
    assert len(runs) == 13 and (runs["status"] == "completed").sum() == 11  # .retired/ is not read

    s = stats.set_index(["task", "method"])
    assert s.loc[("mrpc", "adapter"), "metric_mean"] == pytest.approx(0.82)
    assert s.loc[("mrpc", "adapter"), "metric_std"] == pytest.approx(0.02)  # sample std over 3 seeds
    assert s.loc[("rte", "safe"), "n"] == 2  # the failed and the interrupted run are not averaged
    assert s.loc[("rte", "safe"), "metric_std"] == pytest.approx(math.sqrt(2) / 100)
    assert s.loc[("mrpc", "safe"), "memory.state_plus_saved_peak_bytes_ratio"] == pytest.approx(0.6)
    assert s.loc[("rte", "safe"), "flops.train_total_ratio"] == pytest.approx(0.5)
    assert s.loc[("mrpc", "adapter"), "time.train_s_mean"] == pytest.approx(12.0)
    assert s.loc[("mrpc", "safe"), "time.train_s_ratio"] == pytest.approx(0.5)

    main_t = report["tables"]["main/m"].set_index("method")
    assert list(main_t.index) == ["adapter", "safe"]  # the baseline first
    assert main_t.loc["adapter", "MRPC"] == "82.00 ± 2.00"
    assert main_t.loc["safe", "MRPC"] == "83.00 ± 2.00"
    assert main_t.loc["safe", "RTE"] == "62.00 ± 1.41"
    assert main_t.loc["adapter", "avg"] == "72.00" and main_t.loc["safe", "avg"] == "72.50"
    assert main_t.loc["adapter", "peak memory (MiB)"] == "150" and main_t.loc["safe", "peak memory (MiB)"] == "80"
    assert main_t.loc["safe", "peak memory ×adapter"] == "0.55×"  # mean over tasks of 0.60 and 0.50
    assert main_t.loc["adapter", "mean saved/step (MiB)"] == "37.5" and main_t.loc["safe", "mean saved/step ×adapter"] == "0.55×"
    assert main_t.loc["adapter", "train FLOPs (TFLOP)"] == "1.5" and main_t.loc["safe", "train FLOPs ×adapter"] == "0.50×"
    assert main_t.loc["safe", "train time (s)"] == "8" and main_t.loc["safe", "train time ×adapter"] == "0.50×"

    eff = report["tables"]["efficiency/m"]
    row = eff[(eff["task"] == "RTE") & (eff["method"] == "safe")].iloc[0]
    assert row["n"] == 2 and row["seeds"] == "1,2"
    assert row["state + saved, peak (MiB)"] == "100.000 ± 0.000 [0.50×]"
    assert row["saved for backward, mean (MiB)"] == "25.000 ± 0.000 [0.50×]"

    t1 = report["tables"]["pruning_metric/m"].set_index("criterion")
    assert t1.loc["hies", "MRPC 0%"] == "82.00 ± 2.00"  # the unpruned model
    assert t1.loc["hies", "MRPC 50%"] == "72.00 ± 2.00"
    assert t1.loc["random", "MRPC 50%"] == "52.00 ± 1.00"
    assert t1.loc["random", "MRPC 10%"] == "-"
    assert (t1.loc["majority class / constant prediction"] == "-").all()  # these runs predate the learning check
    t2 = report["tables"]["pruning_stability/m"].set_index("criterion")
    assert t2.loc["hies", "MRPC 50%"] == "0.900 ± 0.000" and t2.loc["random", "MRPC 50%"] == "0.800 ± 0.100"
    assert "MRPC 0%" not in t2.columns
    p = report["pruning"]
    assert (p.loc[p["ratio"] == 0, "stability_mean"] == 1.0).all()  # the unpruned model agrees with itself
    fig = pruning_figure(p, "m", "mrpc")
    metric_ax, stability_ax = fig.axes
    for line in stability_ax.get_lines():  # every criterion's stability curve starts at the unpruned model
        assert (line.get_xdata()[0], line.get_ydata()[0]) == (0.0, 1.0)
    assert not any(line.get_linestyle() == "--" for line in metric_ax.get_lines())  # trivial level unknown: no line
    plt.close(fig)

    problems = report["problems"]
    assert sorted(problems["status"]) == ["failed", "interrupted", "no results"]
    assert problems.set_index("status").loc["failed", "error"] == "RuntimeError: boom"

    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} >= {"runs.csv", "summary.csv", "pruning.csv", "problems.csv", "report.md",
                                               "efficiency_m.png", "freeze_timeline_m_mrpc.png", "freeze_timeline_m_rte.png",
                                               "pruning_m_mrpc.png"}
    csv = pd.read_csv(out / "runs.csv")
    assert len(csv) == 13 and "memory.state_plus_saved_peak_bytes" in csv.columns and "method_report.adapters.layer0.freeze_step" in csv.columns
    md = (out / "report.md").read_text()
    assert "## Not completed" in md and "RuntimeError: boom" in md and "99_killed" in md


def test_repeated_seeds_are_flagged_and_by_splits_them(tmp_path):
    root = tmp_path / "runs"
    for i, (lr, acc) in enumerate(((1e-3, 0.8), (1e-4, 0.6))):
        run = write_run(root, f"{i}_mrpc", task="mrpc", method="adapter", seed=1, acc=acc, mem_mib=10, flops=1e9, train_s=1)
        (run / "config.yaml").write_text(f"trainer:\n  lr: {lr}\n")
    mixed = build_report([root], tmp_path / "r1", plots=False)
    assert "settings differ: trainer.lr; split with --by" in mixed["tables"]["efficiency/m"].iloc[0]["n"]
    assert "pool runs with different settings" in mixed["markdown"] and "m / mrpc / adapter: trainer.lr" in mixed["markdown"]
    assert "_settings" not in pd.read_csv(tmp_path / "r1" / "runs.csv").columns
    split = build_report([root], tmp_path / "r2", by=["trainer.lr"], plots=False)
    t = split["tables"]["main/m"]
    assert "different settings" not in split["markdown"]
    assert sorted(t["method"]) == ["adapter trainer.lr=0.0001", "adapter trainer.lr=0.001"]
    assert sorted(t["MRPC"]) == ["60.00 (n=1)", "80.00 (n=1)"]


def test_safe_baselines_are_their_own_rows_and_new_config_keys_do_not_flag_old_runs(tmp_path):
    root = tmp_path / "runs"
    for i, (policy, acc) in enumerate((("safe", 0.8), ("safe", 0.82), ("static", 0.7), ("random", 0.75))):
        run = write_run(root, f"{i}_mrpc", task="mrpc", method="safe", seed=i, acc=acc, mem_mib=10, flops=1e9, train_s=1,
                        extra={"method_report": {"policy": policy}})
        # run 1 predates a config key that run 0 has (with its default): not a difference in settings; runs 2
        # and 3 were saved while SAFE's policy was a group of its own (freeze.name), run 0 and 1 after
        policy_yaml = f"freeze:\n  name: {policy}\n" if i >= 2 else f"safe:\n  policy: {policy}\n"
        (run / "config.yaml").write_text(f"seed: {i}\n{policy_yaml}" + ("task:\n  holdout_samples: 0\n" if i == 0 else ""))
    report = build_report([root], tmp_path / "r", plots=False)
    t = report["tables"]["main/m"].set_index("method")
    assert sorted(t.index) == ["safe", "safe:random", "safe:static"]
    assert t.loc["safe", "MRPC"] == "81.00 ± 1.41" and t.loc["safe:static", "MRPC"] == "70.00 (n=1)"
    assert "different settings" not in report["markdown"]


def test_by_sweep_gives_one_group_per_sweep_dir(tmp_path):
    root = tmp_path / "outputs"
    for sweep, lr, accs in (("lr-high", 1e-3, (0.8, 0.82)), ("lr-low", 1e-4, (0.6, 0.62))):
        for seed, acc in zip((1, 2), accs):
            run = write_run(root / sweep, f"{seed}_mrpc", task="mrpc", method="adapter", seed=seed, acc=acc,
                            mem_mib=10, flops=1e9, train_s=1)
            (run / "config.yaml").write_text(f"seed: {seed}\ntrainer:\n  lr: {lr}\n")
    pooled = build_report([root], tmp_path / "r1", plots=False)
    assert pooled["tables"]["main/m"].iloc[0]["MRPC"] == "71.00 ± 11.60"  # four runs, two recipes, one mean
    assert "pool runs with different settings" in pooled["markdown"]
    split = build_report([root], tmp_path / "r2", by=["sweep"], plots=False)
    t = split["tables"]["main/m"].set_index("method")
    assert t.loc["adapter sweep=lr-high", "MRPC"] == "81.00 ± 1.41" and t.loc["adapter sweep=lr-low", "MRPC"] == "61.00 ± 1.41"
    assert "different settings" not in split["markdown"]
    one = build_report([root / "lr-low"], tmp_path / "r3", by=["sweep"], plots=False)
    assert list(one["tables"]["main/m"]["method"]) == ["adapter sweep=lr-low"]  # the folder read is named too


def test_cli_writes_the_report(synthetic, tmp_path, capsys):
    assert main([str(synthetic), "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "| adapter | 82.00 ± 2.00 | 62.00 ± 2.00 | 72.00 |" in printed
    assert not list((tmp_path / "cli").glob("*.png"))


def test_a_sweep_of_pruning_jobs_on_saved_runs_gets_its_tables_and_plots(tmp_path):
    """What make repro-hies writes: pruning results only (no training measurements), task and seed from the source run."""
    root = tmp_path / "hies"
    for i, (task, seed, acc) in enumerate((("mrpc", 1, 0.80), ("mrpc", 2, 0.82), ("rte", 1, 0.60))):
        run = root / f"{i}_prune-{task}-s{seed}"
        (run / ".hydra").mkdir(parents=True)
        results = {"status": "completed", "task": task, "model": "m", "method": "prune:hies", "main_metric": "accuracy",
                   "metrics": {"accuracy": acc - 0.1}, "source": {"method": "adapter", "adapter": "lora", "seed": seed},
                   **hies_section(acc, {("hies", 0.5): (acc - 0.1, 0.9), ("his", 0.5): (acc - 0.05, 0.95)})}
        (run / "results.json").write_text(json.dumps(results))
        (run / "config.yaml").write_text("prune:\n  name: hies\nseed: 42\n")
    report = build_report([root], root / "report")
    assert report["runs"]["seed"].tolist() == [1, 2, 1]  # from the source runs, not the pruning job's config
    p = report["pruning"]
    his = p[(p["task"] == "mrpc") & (p["criterion"] == "his") & (p["ratio"] == 0.5)]
    assert his["metric_mean"].item() == pytest.approx(0.76) and his["n"].item() == 2
    assert (root / "report" / "pruning_m_mrpc.png").is_file() and (root / "report" / "pruning_m_rte.png").is_file()
    assert not (root / "report" / "efficiency_m.png").exists()  # nothing was trained: no cost bars


def test_pruning_tables_show_mrpc_f1_beside_accuracy(tmp_path):
    """The HIES paper reports MRPC as F1: its own table (x100, 0% = unpruned), only for the tasks that have F1."""
    root = tmp_path / "hies"
    for i, (task, seed, f1) in enumerate((("mrpc", 1, 0.84), ("mrpc", 2, 0.86), ("rte", 1, None))):
        run = write_prune_job(root, f"{i}_prune-{task}-s{seed}", tmp_path / "src", task=task, seed=seed, unpruned=0.8,
                              values={("hies", 0.5): (0.7, 0.9), ("his", 0.5): (0.65, 0.8)})
        if f1 is not None:
            res = json.loads((run / "results.json").read_text())
            res["pruning"]["unpruned"]["metrics"] = {"accuracy": 0.8, "f1": f1 + 0.04}
            for r in res["pruning"]["results"]:
                r["metrics"]["f1"] = f1 - (0.1 if r["criterion"] == "his" else 0.0)
            (run / "results.json").write_text(json.dumps(res))
    report = build_report([root], root / "report", plots=False)
    p = report["pruning"].set_index(["task", "criterion", "ratio"])
    assert p.loc[("mrpc", "hies", 0.5), "f1_mean"] == pytest.approx(0.85) and p.loc[("mrpc", "hies", 0.0), "f1_mean"] == pytest.approx(0.89)
    assert pd.isna(p.loc[("rte", "hies", 0.5), "f1_mean"])  # RTE has no F1
    f1 = report["tables"]["pruning_f1/m"].set_index("criterion")
    assert list(f1.columns) == ["MRPC 0%", "MRPC 50%"]  # RTE left out
    assert f1.loc["hies", "MRPC 50%"] == "85.00 ± 1.41" and f1.loc["his", "MRPC 50%"] == "75.00 ± 1.41"
    assert f1.loc["hies", "MRPC 0%"] == "89.00 ± 1.41"
    t1 = report["tables"]["pruning_metric/m"].set_index("criterion")
    assert t1.loc["hies", "MRPC 50%"] == "70.00 ± 0.00" and t1.loc["hies", "RTE 50%"] == "70.00"
    md = (root / "report" / "report.md").read_text()
    assert "Table 1 layout, F1 (the paper's metric for MRPC" in md
    # no task with F1: no F1 table
    rte = build_report([root / "2_prune-rte-s1"], tmp_path / "rte-report", plots=False)
    assert "pruning_f1/m" not in rte["tables"] and "F1" not in (tmp_path / "rte-report" / "report.md").read_text()


def test_real_runs_aggregate_to_their_own_numbers(tiny_overrides, tmp_path):
    from runner.preflight.config import compose_config
    from runner.train import run

    root = tmp_path / "sweep"
    for i, (method, seed) in enumerate((("adapter", 1), ("adapter", 2), ("full", 1))):
        extra = ["method=full", "adapter=none"] if method == "full" else []
        run(compose_config([*tiny_overrides, *extra, f"seed={seed}"], output_dir=root / f"{i}_{method}-s{seed}"))
    runs, problems, _ = collect([root])
    assert len(runs) == 3 and problems.empty
    report = build_report([root], tmp_path / "report", plots=True)
    res = [json.loads((root / d / "results.json").read_text()) for d in ("0_adapter-s1", "1_adapter-s2", "2_full-s1")]
    accs = pd.Series([r["metrics"]["accuracy"] for r in res[:2]])
    main_t = report["tables"]["main/tiny"].set_index("method")
    assert main_t.loc["adapter", "MRPC"] == f"{accs.mean() * 100:.2f} ± {accs.std() * 100:.2f}"
    assert main_t.loc["full", "MRPC"] == f"{res[2]['metrics']['accuracy'] * 100:.2f} (n=1)"
    stats = report["stats"].set_index("method")
    mem = [r["memory"]["state_plus_saved_peak_bytes"] for r in res]
    assert stats.loc["full", "memory.state_plus_saved_peak_bytes_ratio"] == pytest.approx(mem[2] / ((mem[0] + mem[1]) / 2))
    flops = [r["flops"]["train_total"] for r in res]
    assert stats.loc["full", "flops.train_total_ratio"] == pytest.approx(flops[2] / ((flops[0] + flops[1]) / 2))
    assert stats.loc["full", "flops.train_total_ratio"] > 1  # full fine-tuning computes weight gradients too
    assert (tmp_path / "report" / "efficiency_tiny.png").stat().st_size > 0


def test_pruning_jobs_beside_trained_runs_print_dashes_and_plain_numbers(tmp_path):
    """Pruning jobs have no memory, FLOPs or time: `-` in the tables, no empty legend entry; times never 2.14e+03."""
    root = tmp_path / "mixed"
    for seed, train_s in ((1, 2140.3), (2, 2139.7)):
        src = write_run(root, f"{seed}_mrpc-adapter-s{seed}", task="mrpc", method="adapter", seed=seed, acc=0.8,
                        mem_mib=1010, flops=2e12, train_s=train_s)
        write_prune_job(root, f"{seed + 2}_prune-s{seed}", src, task="mrpc", seed=seed, unpruned=0.8,
                        values={("hies", 0.5): (0.7, 0.9)})
    report = build_report([root], tmp_path / "report")
    main_t = report["tables"]["main/m"].set_index("method")
    assert list(main_t.index) == ["adapter", "prune:hies"]
    assert main_t.loc["adapter", "train time (s)"] == "2140" and main_t.loc["adapter", "peak memory (MiB)"] == "1010"
    assert main_t.loc["adapter", "train time ×adapter"] == "1.00×"
    prune_row = main_t.loc["prune:hies"].drop("MRPC")
    assert (prune_row.drop("avg") == "-").all() and main_t.loc["prune:hies", "MRPC"] == "80.00 ± 0.00"
    eff = report["tables"]["efficiency/m"].set_index("method")
    assert eff.loc["adapter", "train time (s)"] == "2140.0 ± 0.4 [1.00×]" and eff.loc["prune:hies", "train time (s)"] == "-"
    cells = [str(v) for name in ("main/m", "efficiency/m") for v in report["tables"][name].to_numpy().ravel()]
    assert not [c for c in cells if "e+" in c or "e-0" in c or "nan" in c]
    assert not re.search(r"\bnan\b", report["markdown"])

    fig = efficiency_figure(report["stats"], "m", "adapter")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["adapter"]  # no empty prune:hies entry
    assert all(len(ax.patches) == 1 for ax in fig.axes)  # one task, one method with bars
    plt.close(fig)
    assert (tmp_path / "report" / "efficiency_m.png").is_file()


def test_the_trivial_level_is_drawn_and_collapsed_cells_are_marked(tmp_path):
    """MRPC's majority class is 68.38: a pruned model there collapsed, whatever its drop from the unpruned one."""
    root = tmp_path / "collapse"
    level = 0.6838
    for seed, (hies, random) in ((1, (0.70, level)), (2, (level, 0.60))):
        src = write_run(root, f"{seed}_mrpc-adapter-s{seed}", task="mrpc", method="adapter", seed=seed, acc=0.8 + seed / 100,
                        mem_mib=10, flops=1e9, train_s=1, extra=learning_section(level))
        # a pruning job on the saved run: the trivial level comes from its source run's results.json
        write_prune_job(root, f"{seed + 2}_prune-s{seed}", src, task="mrpc", seed=seed, unpruned=0.8 + seed / 100,
                        values={("hies", 0.5): (hies, 0.8), ("random", 0.5): (random, 0.7)})
    # a run pruned right after training: learning and pruning in one results.json
    write_run(root, "5_mrpc-full-s1", task="mrpc", method="full", seed=1, acc=0.85, mem_mib=10, flops=1e9, train_s=1,
              extra={**learning_section(level), **hies_section(0.85, {("hies", 0.5): (0.75, 0.9)})})
    report = build_report([root], tmp_path / "report")
    t1 = report["tables"]["pruning_metric/m"].set_index("criterion")
    assert t1.loc["majority class", "MRPC 0%"] == "68.38" and t1.loc["majority class", "MRPC 50%"] == "68.38"
    assert t1.loc["random (prune:hies)", "MRPC 50%"] == "64.19 ± 5.93 (collapsed)"
    assert t1.loc["hies (prune:hies)", "MRPC 50%"] == "69.19 ± 1.15 (1/2 collapsed)"
    assert t1.loc["hies (full)", "MRPC 50%"] == "75.00" and t1.loc["hies (prune:hies)", "MRPC 0%"] == "81.50 ± 0.71"
    assert "(collapsed)" in report["markdown"]
    p = report["pruning"]
    assert p["trivial"].tolist() == pytest.approx([level] * len(p))
    assert (tmp_path / "report" / "pruning.csv").read_text().splitlines()[0].endswith("trivial,trivial_what,collapsed_n")

    fig = pruning_figure(p, "m", "mrpc")
    metric_ax = fig.axes[0]
    dashed = [line for line in metric_ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx([level, level])
    assert "majority class (0.684)" in [t.get_text() for t in metric_ax.get_legend().get_texts()]
    plt.close(fig)


def test_safe_frontier_marks_the_pareto_front_and_picks_the_largest_saving_that_holds_the_metric(tmp_path):
    """A grid over safe.threshold: the rule picks the lowest FLOPs ratio whose mean metric is within 0.5
    points of LoRA's, the table and the figure come with the report, and ratios reach the baseline
    although it has no SAFE settings."""
    root = tmp_path / "grid"
    grid = {None: ((0.80, 0.81, 0.82), 1.0, 100), 1.0: ((0.74, 0.75, 0.76), 0.5, 40), 0.9: ((0.79, 0.80, 0.81), 0.8, 70),
            0.7: ((0.806, 0.807, 0.808), 0.7, 60), 0.5: ((0.811, 0.812, 0.813), 0.85, 80)}
    grid[0.6] = ((0.815, 0.815), 0.6, 50)  # inside the band at less FLOPs, but on 2 of the baseline's 3 seeds
    grid[0.4] = ((0.82, 0.82, 0.82), 0.55, 45)  # the same, on 1 seed aggregated three times (n counts runs: 3)
    for threshold, (accs, flops, mem) in grid.items():
        for i, (seed, acc) in enumerate(zip((1, 1, 1) if threshold == 0.4 else (1, 2, 3), accs)):
            method = "adapter" if threshold is None else "safe"
            run = write_run(root, f"{method}-{threshold}-{i}-s{seed}", task="mrpc", method=method, seed=seed, acc=acc,
                            mem_mib=mem, flops=flops * 1e12, train_s=10)
            if threshold is not None:
                with (run / "config.yaml").open("a") as f:
                    f.write(f"safe:\n  threshold: {threshold}\n")
    report = build_report([root], tmp_path / "report", by=["safe.threshold"])
    s = report["stats"].set_index(["method", "cfg.safe.threshold"])
    assert s.loc[("safe", "0.7"), "flops.train_total_ratio"] == pytest.approx(0.7)  # the baseline's "-" matches

    from runner.aggregate import frontier_points

    p = frontier_points(report["stats"], "m", "mrpc").set_index("setting")
    assert p.attrs["baseline_metric"] == pytest.approx(81.0)
    assert p["metric"].to_dict() == pytest.approx({"safe safe.threshold=1.0": 75.0, "safe safe.threshold=0.9": 80.0,
                                                   "safe safe.threshold=0.7": 80.7, "safe safe.threshold=0.5": 81.2,
                                                   "safe safe.threshold=0.6": 81.5, "safe safe.threshold=0.4": 82.0})
    assert p["n"].to_dict() == {"safe safe.threshold=1.0": 3, "safe safe.threshold=0.9": 3, "safe safe.threshold=0.7": 3,
                                "safe safe.threshold=0.5": 3, "safe safe.threshold=0.6": 2, "safe safe.threshold=0.4": 1}
    assert p["holds_metric"].to_dict() == {"safe safe.threshold=1.0": False, "safe safe.threshold=0.9": False,
                                           "safe safe.threshold=0.7": True, "safe safe.threshold=0.5": True,
                                           "safe safe.threshold=0.6": True, "safe safe.threshold=0.4": True}
    assert p["pareto"].to_dict() == {"safe safe.threshold=1.0": True, "safe safe.threshold=0.9": False,
                                     "safe safe.threshold=0.7": False, "safe safe.threshold=0.5": False,
                                     "safe safe.threshold=0.6": False, "safe safe.threshold=0.4": True}
    # the 2-seed and the repeated 1-seed points hold at less FLOPs, but a default needs the baseline's 3 seeds
    assert p.index[p["chosen"]].tolist() == ["safe safe.threshold=0.7"]
    assert p.loc["safe safe.threshold=0.7", "memory_ratio"] == pytest.approx(0.6)

    table = report["tables"]["frontier/m"].set_index("setting")
    assert table.loc[table["chosen"] != "", "chosen"].to_dict() == {
        "safe safe.threshold=0.7": "<- rule", "safe safe.threshold=0.6": "holds on fewer seeds (n < 3)",
        "safe safe.threshold=0.4": "holds on fewer seeds (n < 3)"}
    assert "SAFE's frontier" in report["markdown"] and "<- rule" in report["markdown"]
    png = tmp_path / "report" / "frontier_m_mrpc.png"
    assert png in report["figures"] and plt.imread(png).shape[0] > 100


def test_safe_frontier_with_an_empty_band_marks_the_closest_setting_and_never_picks_a_baseline(tmp_path):
    """No SAFE setting within 0.5 points of LoRA: the rule picks nothing and the most accurate SAFE setting
    among those with the most seeds is marked closest; the random-order baseline (policy random) holds the metric but is not a candidate. The
    plot labels keep only the settings that vary."""
    root = tmp_path / "grid"
    grid = {("adapter", None, None): (0.80, 1.0), ("safe", 0.5, "safe"): (0.77, 0.9), ("safe", 0.9, "safe"): (0.74, 0.7),
            ("safe", 0.5, "random"): (0.80, 0.6), ("safe", 0.7, "safe"): (0.79, 0.8)}
    for (method, threshold, policy), (acc, flops) in grid.items():
        for seed in (1, 2) if threshold != 0.7 else (1,):  # T=0.7: one lucky seed, not a default
            extra = {"method_report": {"policy": policy}} if policy else None
            run = write_run(root, f"{method}-{threshold}-{policy}-s{seed}", task="mrpc", method=method, seed=seed,
                            acc=acc, mem_mib=100 * flops, flops=flops * 1e12, train_s=10, extra=extra)
            if threshold is not None:
                with (run / "config.yaml").open("a") as f:
                    f.write(f"safe:\n  threshold: {threshold}\n  t_w: 0.1\n")
    report = build_report([root], tmp_path / "report", by=["safe.threshold", "safe.t_w"])

    from runner.aggregate import frontier_points

    p = frontier_points(report["stats"], "m", "mrpc").set_index("label")
    assert sorted(p.index) == ["T=0.5", "T=0.7", "T=0.9", "safe:random T=0.5"]  # t_w is the same everywhere
    assert p["holds_metric"].to_dict() == {"T=0.5": False, "T=0.7": False, "T=0.9": False, "safe:random T=0.5": True}
    assert not p["chosen"].any()
    assert p.index[p["closest"]].tolist() == ["T=0.5"]
    table = report["tables"]["frontier/m"]
    assert table.loc[table["chosen"] != "", "chosen"].tolist() == ["closest (holds nothing)"]
    assert "<- rule" not in report["markdown"] and "closest (holds nothing)" in report["markdown"]


def test_no_frontier_without_a_grid(synthetic, tmp_path):
    report = build_report([synthetic], tmp_path / "report", baseline="adapter")
    assert "frontier/m" not in report["tables"] and not any("frontier" in f.name for f in report["figures"])
