"""HIES benchmark: fine-tune MiniLM on MRPC and RTE, prune with every criterion, tabulate.

For each task and seed: fine-tune once with the runner (or reuse a finished
run given with ``--runs``), then prune that run on its own
(``prune.from_run``): score once on 32 training examples, evaluate every
criterion at every ratio without fine-tuning, time the 50%-pruned HIES model
against the unpruned one at batch 1 and 32. Prints and writes
``<out>/bench_hies.md`` and ``<out>/bench_hies.json``: metric and stability
(mean and std over seeds) per criterion and ratio; FLOPs, parameter and
latency ratios at 50%; scoring time; the trivial level (majority class) of each
task, with the cells where pruning collapsed a model to it marked.

    python scripts/bench_hies.py                                   # the full benchmark
    python scripts/bench_hies.py --runs mrpc=outputs/runs/A,outputs/runs/B,outputs/runs/C --tasks mrpc
    python scripts/bench_hies.py --tasks mrpc --seeds 1 --train task.max_train_samples=256 trainer.max_steps=8  # smoke
    python scripts/bench_hies.py --dry-run                         # print the commands only
    python scripts/bench_hies.py --from-sweep outputs/repro-hies/minilm   # the tables for what `make repro-hies` ran
    python scripts/bench_hies.py --tasks mrpc sst2 --from-sweep outputs/depth/hies_mrpc outputs/depth/hies_sst2 --out DIR

Everything runs as two ``runner.sweep`` dirs under ``--out`` (``train/``,
``prune/``; each job its own process); rerunning the command continues them.
Fine-tuning uses ``--recipe`` (default: full fine-tuning at lr 1e-4,
the runner's 3 epochs) plus ``--train`` overrides, e.g. ``--recipe
"method=safe"``; pruning takes ``--prune`` overrides (e.g.
``prune.latency_threads=1`` on a busy machine). To choose alpha on examples
the model never saw: ``--train task.holdout_samples=256 --prune prune.alpha=auto``; the paper's protocol
(choose alpha on one dev half, report every criterion on the other): ``--prune prune.alpha=auto
prune.alpha_split=dev_half``. MRPC's tables show F1 (the paper's metric) beside accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from runner.aggregate import find_results, summarize_pruning, trivial_level
from runner.results import read_completed
from runner.sweep import completed_runs, run_or_resume

CRITERIA = ["hies", "his", "entropy", "magnitude", "random", "none"]
RATIOS = [0.1, 0.3, 0.5, 0.7]
DEFAULT_RECIPE = "method=full trainer.lr=1e-4"


def _list(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def parse_runs(items: list[str]) -> dict[str, list[Path]]:
    runs: dict[str, list[Path]] = {}
    for item in items:
        task, _, dirs = item.partition("=")
        if not dirs:
            raise SystemExit(f"--runs takes task=dir1,dir2,...; got {item!r}")
        runs[task] = [Path(d).expanduser().resolve() for d in dirs.split(",") if d]
    return runs


def _latency_words(e: dict) -> str:
    """The latency part of the 50% line; runs with ``prune.latency=none`` timed nothing (no NaNs in the table)."""
    bs1, bs32 = e.get("latency_ratio_bs1"), e.get("latency_ratio_bs32")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (bs1, bs32)):
        return "latency not timed (prune.latency=none)"
    return (f"latency x{bs1:.3f} at batch 1 and x{bs32:.3f} at batch 32 (median of interleaved pairs, median over "
            f"seeds; latency - FLOPs at batch 32: {e.get('latency_minus_flops_bs32', float('nan')):+.3f})")


def from_sweep(roots: list[Path], tasks: list[str], criteria: list[str], ratios: list[float]) -> list[dict]:
    """Summaries of the completed pruning runs under ``roots``, one per task, in ``tasks`` order."""
    by_task: dict[str, list[dict]] = {}
    for path in (p for root in roots for p in find_results(root)):  # skips .retired/ attempts and .hydra/, as the report does
        res = read_completed(path.parent)
        if res is not None and res.get("pruning") and res.get("task") in tasks:
            res["_dir"] = str(path.parent)
            res.setdefault("source_run", str(path.parent))
            by_task.setdefault(res["task"], []).append(res)
    return [aggregate(t, by_task[t], criteria, ratios) for t in tasks if t in by_task]


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _ms(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _std(value, n) -> float:
    return 0.0 if n < 2 or value != value else float(value)  # one seed: 0, as before (pandas gives NaN)


def aggregate(task: str, results: list[dict], criteria: list[str], ratios: list[float]) -> dict:
    metric = results[0]["main_metric"]
    trivial = [(trivial_level(res) or {}).get("trivial") for res in results]  # per seed; None: unknown
    # metric and stability per (criterion, ratio) over seeds: the report's own statistics (runner.aggregate)
    raw = [{"row": {"status": "completed", "model": res.get("model"), "task": task, "method": res.get("method"),
                    "adapter": "-", "seed": i}, "results": res} for i, res in enumerate(results)]
    stats = summarize_pruning(raw)
    table = {}
    for r in stats.to_dict("records") if not stats.empty else []:
        if r["criterion"] not in criteria or r["ratio"] not in ratios:
            continue
        table[f"{r['criterion']}@{r['ratio']}"] = {
            "criterion": r["criterion"], "ratio": r["ratio"], "seeds": int(r["n"]),
            "metric_mean": float(r["metric_mean"]), "metric_std": _std(r["metric_std"], r["n"]),
            "stability_mean": float(r["stability_mean"]), "stability_std": _std(r["stability_std"], r["n"]),
            "collapsed_seeds": int(r["collapsed_n"]),
        }
        if r.get("f1_mean") == r.get("f1_mean") and r.get("f1_mean") is not None:  # the paper's MRPC metric
            table[f"{r['criterion']}@{r['ratio']}"].update(f1_mean=float(r["f1_mean"]), f1_std=_std(r["f1_std"], r["n"]))
    unpruned = _ms([res["pruning"]["unpruned"]["main_metric"] for res in results])
    unpruned_f1 = _ms([(res["pruning"]["unpruned"].get("metrics") or {}).get("f1") for res in results])
    half = [next((x for x in res["pruning"]["results"] if x["criterion"] == "hies" and x["ratio"] == 0.5), None)
            for res in results]
    half = [x for x in half if x is not None]
    eff = {}
    if half:
        eff = {
            "heads_kept": half[0]["heads_kept"], "params_ratio": _ms([x["params_ratio"] for x in half])[0],
            "flops_ratio": _ms([x["flops_ratio"] for x in half])[0],
        }
        for bs in ("bs1", "bs32"):
            lat = [x["latency"][bs] for x in half if x.get("latency") and bs in x["latency"]]
            if lat:
                eff[f"latency_ratio_{bs}"] = float(np.median([v["ratio"] for v in lat]))
                eff[f"latency_ratio_{bs}_per_seed"] = [v["ratio"] for v in lat]
                eff[f"unpruned_ms_per_example_{bs}"] = float(np.median([v["unpruned_ms_per_example"] for v in lat]))
        if "latency_ratio_bs32" in eff:
            eff["latency_minus_flops_bs32"] = eff["latency_ratio_bs32"] - eff["flops_ratio"]
    scoring = [res["pruning"]["scoring"] for res in results]
    compare = {}
    for r in (0.3, 0.5):
        h, s = table.get(f"hies@{r}"), table.get(f"his@{r}")
        if h and s:
            compare[str(r)] = {"hies": h["metric_mean"], "his": s["metric_mean"], "hies_minus_his": h["metric_mean"] - s["metric_mean"],
                               "hies_stability_minus_his": h["stability_mean"] - s["stability_mean"]}
    known = [t for t in trivial if t is not None]
    return {
        "task": task, "metric": metric, "seeds": len(results), "unpruned_mean": unpruned[0], "unpruned_std": unpruned[1],
        "unpruned_f1_mean": unpruned_f1[0], "unpruned_f1_std": unpruned_f1[1], "alpha_split": alpha_split(results),
        "trivial_mean": float(np.mean(known)) if known else None,
        "table": table, "efficiency_at_0.5": eff,
        "scoring": {"calib_examples": scoring[0]["calib_examples"], "time_s_median": float(np.median([x["time_s"] for x in scoring])),
                    "time_s_max": float(max(x["time_s"] for x in scoring)), "alpha": [x.get("alpha") for x in scoring]},
        "hies_vs_his": compare,
        "runs": [res["source_run"] for res in results], "prune_dirs": [res.get("_dir") for res in results],
    }


def alpha_split(results: list[dict]) -> str:
    """Which eval examples the seeds were reported on (``pruning.alpha_split``; older runs: the whole eval split)."""
    texts = []
    for res in results:
        sp = res["pruning"].get("alpha_split") or {"protocol": "train_holdout"}
        n = sp.get("eval_examples", res["pruning"].get("eval_examples", "?"))
        if sp["protocol"] == "dev_half":
            texts.append(f"dev_half: alpha chosen on {sp['choose_examples']}, reported on {sp['report_examples']} of "
                         f"{n} {sp.get('eval_split', 'eval')} examples (seed {sp.get('seed')})")
        else:
            texts.append(f"train_holdout: reported on all {n} {sp.get('eval_split', 'eval')} examples")
    return "; ".join(dict.fromkeys(texts))


def markdown(summaries: list[dict], criteria: list[str], ratios: list[float]) -> str:
    lines = ["# HIES benchmark", "",
             "Pruning without fine-tuning; mean over seeds (± std). Stability: fraction of the reported eval examples "
             "whose predicted label equals the unpruned model's (1 - k/n when k of n differ). F1 (the paper's MRPC "
             "metric) beside the main metric where the task has it. Majority class: the metric of predicting the "
             "training majority class for every example (a constant prediction for regression); `(collapsed)`: every "
             "seed is at it, `(k/n collapsed)`: k of n seeds.", ""]
    for s in summaries:
        trivial = "-" if s.get("trivial_mean") is None else f"{s['trivial_mean']:.4f}"
        f1 = any("f1_mean" in row for row in s["table"].values())
        lines += [f"## {s['task'].upper()} ({s['metric']}, {s['seeds']} seed(s); unpruned {s['unpruned_mean']:.4f} ± "
                  f"{s['unpruned_std']:.4f}" + (f", F1 {s['unpruned_f1_mean']:.4f} ± {s['unpruned_f1_std']:.4f}"
                                                if np.isfinite(s.get("unpruned_f1_mean") or np.nan) else "")
                  + f"; majority class {trivial})", ""]
        if s.get("alpha_split"):
            lines += [f"Eval examples: {s['alpha_split']}.", ""]
        groups = [(s["metric"], _metric_cell), *([("F1", _f1_cell)] if f1 else []),
                  ("stability", lambda row: f"{row['stability_mean']:.3f}")]
        head = "| criterion | " + " | ".join(f"{int(r * 100)}% {name}" for name, _ in groups for r in ratios) + " |"
        lines += [head, "|" + "---|" * (1 + len(groups) * len(ratios))]
        for crit in criteria:
            rows = [s["table"].get(f"{crit}@{r}") for r in ratios]
            lines.append(f"| {crit} | " + " | ".join(cell(row) if row else "" for _, cell in groups for row in rows) + " |")
        e = s["efficiency_at_0.5"]
        if e:
            lines += ["", f"50% of heads pruned ({e['heads_kept']} kept): params x{e['params_ratio']:.3f}, forward FLOPs "
                          f"x{e['flops_ratio']:.3f}, {_latency_words(e)}."]
        sc = s["scoring"]
        lines += ["", f"Scoring: {sc['calib_examples']} calibration examples, {sc['time_s_median']:.2f} s median "
                      f"({sc['time_s_max']:.2f} s max); alpha {sc['alpha']}."]
        for r, c in s["hies_vs_his"].items():
            verdict = "HIES >= HIS" if c["hies_minus_his"] >= 0 else "HIES < HIS"
            lines.append(f"- {int(float(r) * 100)}%: HIES {c['hies']:.4f} vs HIS {c['his']:.4f} ({c['hies_minus_his']:+.4f}, "
                         f"stability {c['hies_stability_minus_his']:+.3f}): {verdict}")
        lines.append("")
    by_ratio: dict[str, list[float]] = {}
    for s in summaries:
        for r, c in s["hies_vs_his"].items():
            by_ratio.setdefault(r, []).append(c["hies_minus_his"])
    if by_ratio:
        each = ", ".join(f"{int(float(r) * 100)}% {np.mean(v):+.4f}" for r, v in by_ratio.items())
        met = all(np.mean(v) >= 0 for v in by_ratio.values())
        lines.append(f"HIES - HIS, averaged over tasks: {each}; over both ratios "
                     f"{np.mean([x for v in by_ratio.values() for x in v]):+.4f} "
                     f"(target HIES >= HIS at each ratio: {'met' if met else 'missed'}).")
    return "\n".join(lines) + "\n"


def _f1_cell(row: dict) -> str:
    return f"{row['f1_mean']:.4f} ± {row['f1_std']:.3f}" if "f1_mean" in row else ""


def _metric_cell(row: dict) -> str:
    """Mean ± std over seeds, and how many seeds pruning collapsed to the majority class."""
    text = f"{row['metric_mean']:.4f} ± {row['metric_std']:.3f}"
    k, n = row.get("collapsed_seeds", 0), row["seeds"]
    return text + ("" if not k else " (collapsed)" if k == n else f" ({k}/{n} collapsed)")


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "rte"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--runs", nargs="*", default=[], metavar="TASK=DIR,DIR,...",
                    help="reuse finished fine-tuning runs (one per seed) instead of training")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE,
                    help=f"fine-tuning overrides (default {DEFAULT_RECIPE!r}: full fine-tuning; LoRA with the runner's "
                         f"defaults stays at MRPC's majority class after an epoch); '' for the runner's defaults")
    ap.add_argument("--train", nargs="*", default=[], metavar="OVERRIDE", help="extra overrides for fine-tuning (after --recipe)")
    ap.add_argument("--prune", nargs="*", default=[], metavar="OVERRIDE", help="extra overrides for pruning")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default outputs/bench_hies, or DIR/bench_hies with --from-sweep)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--from-sweep", type=Path, nargs="+", default=None, metavar="DIR",
                    help="run nothing: tabulate the completed pruning runs under DIR (e.g. make repro-hies's sweep dir; "
                         "several: their runs together, e.g. one per task) into the first DIR's bench_hies/")
    args = ap.parse_args(argv)

    criteria = list(dict.fromkeys(["hies", *args.criteria]))
    t0 = time.perf_counter()
    for root in args.from_sweep or []:
        if not root.is_dir():
            raise SystemExit(f"--from-sweep {root}: no such folder")
    out = (args.out or (args.from_sweep[0] / "bench_hies" if args.from_sweep else REPO / "outputs" / "bench_hies")).resolve()
    if args.from_sweep is None:
        code = run_sweeps(args, out, criteria)
        if args.dry_run:
            return
        if code:
            raise SystemExit(f"bench_hies: not every job completed (exit {code}); see the sweep_summary.md files under {out}; "
                             "rerun the command to continue")
    roots = args.from_sweep or [out / "prune"]
    summaries = from_sweep(roots, args.tasks, criteria, args.ratios)
    if not summaries:
        raise SystemExit(f"{', '.join(map(str, roots))}: no completed pruning runs for {args.tasks}")
    md = markdown(summaries, criteria, args.ratios)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_hies.md").write_text(md)
    (out / "bench_hies.json").write_text(json.dumps({"summaries": summaries, "seconds": time.perf_counter() - t0,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    print(md)
    print(f"wrote {out / 'bench_hies.md'} and {out / 'bench_hies.json'} ({time.perf_counter() - t0:.0f} s)")


def run_sweeps(args, out: Path, criteria: list[str]) -> int:
    """Fine-tune tasks x seeds in one sweep (unless --runs gives the runs), then prune every completed
    fine-tuning run in a second sweep (prune.from_run). Rerunning continues both."""
    given = parse_runs(args.runs)
    sources = [str(d) for task in args.tasks for d in given.get(task, [])]
    todo = [t for t in args.tasks if t not in given]
    if todo:
        rc = run_or_resume(out / "train", [
            "task=" + ",".join(f"glue/{t}" for t in todo), "seed=" + ",".join(map(str, args.seeds)), "logger=none",
            "trainer.progress_bar=false", *args.recipe.split(), *args.train], dry_run=args.dry_run)
        if rc:
            return rc
        if args.dry_run:
            sources.append("<the completed runs of that sweep>")
        else:
            sources += [str(d.resolve()) for d in completed_runs(out / "train")]
    return run_or_resume(out / "prune", [
        "prune=hies", "prune.from_run=" + ",".join(sources), f"prune.ratios={_list(args.ratios)}",
        f"prune.ratio={0.5 if 0.5 in args.ratios else args.ratios[0]}", f"prune.compare={_list(criteria)}",
        "prune.latency=primary", "prune.latency_ratios=[0.5]", "prune.save_model=none", "logger=none", *args.prune,
    ], dry_run=args.dry_run)


if __name__ == "__main__":
    main()
