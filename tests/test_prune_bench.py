"""The benchmark's tables: means over seeds, 50% efficiency, the HIES-vs-HIS verdict."""

from __future__ import annotations


import pytest
from helpers import load_script


def _bench():
    return load_script("bench_hies")


def _result(seed_shift: float) -> dict:
    recs = []
    for crit, drop in (("hies", 0.05), ("his", 0.10), ("none", 0.0)):
        for r in (0.3, 0.5):
            rec = {"criterion": crit, "ratio": r, "main_metric": 0.8 - drop * r * 10 + seed_shift,
                   "stability": 1 - drop * r, "heads_kept": 36, "params_ratio": 0.92, "flops_ratio": 0.82, "latency": None}
            if crit == "hies" and r == 0.5:
                rec["latency"] = {"bs1": {"ratio": 0.85, "unpruned_ms_per_example": 10.0},
                                  "bs32": {"ratio": 0.84 + seed_shift, "unpruned_ms_per_example": 8.0}}
            recs.append(rec)
    return {"main_metric": "accuracy", "source_run": "x",
            "pruning": {"results": recs, "unpruned": {"main_metric": 0.8 + seed_shift},
                        "scoring": {"calib_examples": 32, "time_s": 2.0 + seed_shift, "alpha": 0.5}}}


def test_aggregate_and_markdown():
    bench = _bench()
    s = bench.aggregate("mrpc", [_result(0.0), _result(0.02)], ["hies", "his", "none"], [0.3, 0.5])
    assert s["table"]["hies@0.5"]["metric_mean"] == pytest.approx(0.8 - 0.25 + 0.01)
    assert s["table"]["hies@0.5"]["metric_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert s["unpruned_mean"] == pytest.approx(0.81)
    e = s["efficiency_at_0.5"]
    assert e["flops_ratio"] == pytest.approx(0.82) and e["latency_ratio_bs32"] == pytest.approx(0.85)
    assert e["latency_minus_flops_bs32"] == pytest.approx(0.03)
    assert s["hies_vs_his"]["0.3"]["hies_minus_his"] == pytest.approx(0.15)
    md = bench.markdown([s], ["hies", "his", "none"], [0.3, 0.5])
    assert "| hies | 0.6600 ± 0.014 | 0.5600 ± 0.014 |" in md
    assert "at each ratio: met" in md and "x0.820" in md and "latency x0.850 at batch 1" in md
    untimed = [_result(0.0)]
    untimed[0]["pruning"]["results"] = [dict(r, latency=None) for r in untimed[0]["pruning"]["results"]]
    md = bench.markdown([bench.aggregate("mrpc", untimed, ["hies", "his"], [0.5])], ["hies", "his"], [0.5])
    assert "latency not timed (prune.latency=none)" in md and "nan" not in md


def test_mrpc_f1_beside_accuracy_and_the_alpha_protocol():
    """The paper reports MRPC as F1: its columns sit beside accuracy's; the heading says which examples were reported."""
    bench = _bench()
    results = []
    for shift in (0.0, 0.02):
        res = _result(shift)
        res["pruning"]["unpruned"]["metrics"] = {"accuracy": 0.8 + shift, "f1": 0.86 + shift}
        for r in res["pruning"]["results"]:
            r["metrics"] = {"accuracy": r["main_metric"], "f1": r["main_metric"] + 0.05}
        res["pruning"]["alpha_split"] = {"protocol": "dev_half", "eval_split": "validation", "eval_examples": 408,
                                         "choose_examples": 204, "report_examples": 204, "seed": 1}
        results.append(res)
    s = bench.aggregate("mrpc", results, ["hies", "his"], [0.3, 0.5])
    assert s["table"]["hies@0.5"]["f1_mean"] == pytest.approx(0.8 - 0.25 + 0.01 + 0.05)
    assert s["unpruned_f1_mean"] == pytest.approx(0.87)
    md = bench.markdown([s], ["hies", "his"], [0.3, 0.5])
    assert "| criterion | 30% accuracy | 50% accuracy | 30% F1 | 50% F1 | 30% stability | 50% stability |" in md
    assert "| hies | 0.6600 ± 0.014 | 0.5600 ± 0.014 | 0.7100 ± 0.014 | 0.6100 ± 0.014 | 0.985 | 0.975 |" in md
    assert "unpruned 0.8100 ± 0.0141, F1 0.8700 ± 0.0141" in md
    assert "Eval examples: dev_half: alpha chosen on 204, reported on 204 of 408 validation examples (seed 1)." in md
    # a task without F1 (RTE) keeps the plain layout
    plain = bench.markdown([bench.aggregate("rte", [_result(0.0)], ["hies"], [0.5])], ["hies"], [0.5])
    assert "| criterion | 50% accuracy | 50% stability |" in plain and "F1" not in plain.split("\n## ")[1]


def test_tables_from_a_sweep_dir(tmp_path):
    import json

    sweep = tmp_path / "sweep"
    for i, (task, shift) in enumerate((("mrpc", 0.0), ("mrpc", 0.02), ("rte", 0.0))):
        d = sweep / f"{i}_prune-{task}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({**_result(shift), "status": "completed", "task": task}))
    failed = sweep / "3_prune-broken"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps({**_result(0.5), "status": "failed", "task": "mrpc"}))
    retired = sweep / ".retired" / "0_prune-mrpc.1"  # a superseded attempt the sweep kept aside: never read
    retired.mkdir(parents=True)
    (retired / "results.json").write_text(json.dumps({**_result(0.5), "status": "completed", "task": "mrpc"}))
    bench = _bench()
    bench.main(["--from-sweep", str(sweep), "--criteria", "his", "none", "--ratios", "0.3", "0.5"])
    data = json.loads((sweep / "bench_hies" / "bench_hies.json").read_text())
    mrpc, rte = data["summaries"]
    assert (mrpc["task"], mrpc["seeds"], rte["task"], rte["seeds"]) == ("mrpc", 2, "rte", 1)
    assert mrpc["table"]["hies@0.5"]["metric_mean"] == pytest.approx(0.8 - 0.25 + 0.01)
    assert mrpc["hies_vs_his"]["0.3"]["hies_minus_his"] == pytest.approx(0.15)
    assert ("HIES - HIS, averaged over tasks: 30% +0.1500, 50% +0.2500; over both ratios +0.2000 (target HIES >= HIS at "
            "each ratio: met)") in (sweep / "bench_hies" / "bench_hies.md").read_text()
    with pytest.raises(SystemExit, match="no completed pruning runs"):
        bench.main(["--from-sweep", str(sweep), "--tasks", "sst2"])
    # several dirs (the depth benchmark keeps one per task and seed): their runs together, into the first one's
    other = tmp_path / "other" / "seed2"
    d = other / "0_prune-mrpc"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({**_result(0.04), "status": "completed", "task": "mrpc"}))
    bench.main(["--from-sweep", str(sweep), str(tmp_path / "other"), "--criteria", "his", "none", "--ratios", "0.3", "0.5"])
    mrpc, rte = json.loads((sweep / "bench_hies" / "bench_hies.json").read_text())["summaries"]
    assert (mrpc["seeds"], rte["seeds"]) == (3, 1)
    with pytest.raises(SystemExit, match="no such folder"):
        bench.main(["--from-sweep", str(sweep), str(tmp_path / "nope")])


def test_cells_at_the_majority_class_are_marked_collapsed():
    """MRPC-like: majority class 0.55; a pruned model at or just above it collapsed, whatever its drop."""
    bench = _bench()
    learned = [{**_result(shift), "learning": {"trivial": 0.55, "trivial_prediction": 1}} for shift in (0.0, 0.02)]
    s = bench.aggregate("mrpc", learned, ["hies", "his"], [0.3, 0.5])
    assert s["trivial_mean"] == pytest.approx(0.55)
    assert s["table"]["hies@0.5"]["collapsed_seeds"] == 1 and s["table"]["hies@0.3"]["collapsed_seeds"] == 0
    md = bench.markdown([s], ["hies", "his"], [0.3, 0.5])
    assert "unpruned 0.8100 ± 0.0141; majority class 0.5500)" in md
    assert "| hies | 0.6600 ± 0.014 | 0.5600 ± 0.014 (1/2 collapsed) |" in md
    assert "| his | 0.5100 ± 0.014 (collapsed) | 0.3100 ± 0.014 (collapsed) |" in md
    unknown = bench.aggregate("mrpc", [_result(0.0)], ["hies"], [0.5])  # source run "x" is not there: level unknown
    assert unknown["trivial_mean"] is None and "majority class -)" in bench.markdown([unknown], ["hies"], [0.5])


def test_quality_curve_draws_the_trivial_level():
    import matplotlib.pyplot as plt

    from runner.prune.plots import quality_figure

    records = _result(0.0)["pruning"]["results"]
    fig = quality_figure(records, 0.8, "accuracy", trivial=0.55)
    metric_ax, stability_ax = fig.axes
    trivial = [line for line in metric_ax.get_lines() if line.get_label() == "majority class (0.550)"]
    assert len(trivial) == 1 and trivial[0].get_linestyle() == "--" and list(trivial[0].get_ydata()) == [0.55, 0.55]
    assert all((line.get_xdata()[0], line.get_ydata()[0]) == (0.0, 1.0) for line in stability_ax.get_lines())
    plt.close(fig)
    fig = quality_figure(records, 0.8, "accuracy")  # level unknown: no line
    assert not [line for line in fig.axes[0].get_lines() if "majority" in line.get_label()]
    plt.close(fig)
