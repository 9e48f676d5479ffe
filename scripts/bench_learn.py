#!/usr/bin/env python
"""Do the default recipes learn? MRPC and RTE x {full fine-tuning, LoRA} x {mean, cls pooling} x seeds.

Each (seed, recipe) is one ``runner.sweep`` dir under ``--out`` (tasks and
poolings swept inside it), run seed by seed so that a partial benchmark
already compares every setting; rerun the same command to continue (completed
jobs are skipped, interrupted ones resumed). Then it prints, per task, recipe
and pooling, the main metric (and MRPC's F1) as mean +- std over the seeds
against the majority class, and LoRA's gap to full fine-tuning with the same
pooling. The table goes to ``<out>/summary.md`` and ``summary.json``.
Measurements not needed here (FLOPs, saved-for-backward bytes) are off so
the runs are as fast as the runner allows.

    python scripts/bench_learn.py                                  # the benchmark (make bench-learn)
    python scripts/bench_learn.py --seeds 1 --max-steps 4 --max-train-samples 64 --out /tmp/bl   # smoke
    python scripts/bench_learn.py --table-only                     # tabulate what has finished
    python scripts/bench_learn.py --tasks rte --recipes full lora --poolings mean --seeds 1 --regression-seeds \
        --lrs 2e-5 5e-5 1e-4 --epochs 3 10 --out outputs/bench_learn_rte_grid   # a grid: RTE's ceiling

Recipes (``--recipes``; each a list of runner overrides, see RECIPES):
``lora``: LoRA r8 on every linear layer of the encoder, lr 1e-3, 3 epochs
(the recipe of ``make repro-safe``); ``full``: every weight, lr 5e-5, 3 epochs.
``--lrs`` replaces the recipe's learning rate by a list and ``--epochs`` takes a
list: both are swept inside each sweep, and the table has one row per
(task, recipe, pooling, lr, epochs), read from each run's own config.yaml.

The offline regression task (``runner.synthetic``: MRPC pairs scored by word
overlap, written to ``<out>/overlap-glue``) runs with ``experiment=demo`` as
it stands (``--regression-seeds``; none to skip), its Pearson against the
constant prediction's 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from runner.results import read_completed
from runner.run_files import RESULTS
from runner.sweep import run_or_resume

RECIPES = {
    "lora": ["method=adapter", "adapter=lora", "adapter.target_modules=all-linear",
             "trainer.lr=1e-3"],
    "lora-qv": ["method=adapter", "adapter=lora", "adapter.target_modules=[query,value]", "trainer.lr=1e-3"],
    "full": ["method=full", "adapter=none", "trainer.lr=5e-5"],
}
TARGETS = {"rte": {"accuracy": 0.62}, "mrpc": {"accuracy": 0.82, "f1": 0.87}, "lora_gap_points": 1.5}
DEFAULT_OUT = REPO / "outputs" / "bench_learn"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "rte"])
    p.add_argument("--recipes", nargs="+", default=["lora", "full"], choices=list(RECIPES))
    p.add_argument("--poolings", nargs="+", default=["mean", "cls"], choices=["mean", "cls"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--regression-seeds", nargs="*", type=int, default=[1, 2, 3],
                   help="seeds of the demo recipe on the offline overlap regression task (none: skip it)")
    p.add_argument("--epochs", type=int, nargs="+", default=[3], help="training epochs (several: a grid)")
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="learning rates replacing each recipe's own (several: a grid; default: the recipe's)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra runner override for every run (repeatable)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"benchmark folder (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--table-only", action="store_true", help="run nothing; tabulate the completed runs under --out")
    p.add_argument("--dry-run", action="store_true", help="print the sweep commands only")
    return p.parse_args(argv)


FAST = ["logger=none", "trainer.count_flops=false", "trainer.measure_activations=false", "trainer.progress_bar=false"]


def _common(args) -> list[str]:
    """The measurement switches and the smoke-test caps every run of the benchmark shares."""
    out = list(FAST)
    for flag, key in ((args.max_steps, "trainer.max_steps"), (args.max_train_samples, "task.max_train_samples"),
                      (args.max_eval_samples, "task.max_eval_samples")):
        if flag:
            out.append(f"{key}={flag}")
    return out + list(args.override)


def sweep_overrides(args, recipe: str, seed: int) -> list[str]:
    overrides = [o for o in RECIPES[recipe] if not (args.lrs and o.startswith("trainer.lr="))]
    if args.lrs:
        overrides.append("trainer.lr=" + ",".join(f"{lr:g}" for lr in args.lrs))
    return [f"seed={seed}", "task=" + ",".join(f"glue/{t}" for t in args.tasks), "model.pooling=" + ",".join(args.poolings),
            *overrides, "trainer.epochs=" + ",".join(str(e) for e in args.epochs), *_common(args)]


def regression_overrides(args, seed: int) -> list[str]:
    """The demo recipe, unchanged, on the overlap regression task."""
    return [f"seed={seed}", "experiment=demo", "task=glue/stsb", f"task.data_dir={(args.out / 'overlap-glue').resolve()}",
            *_common(args)]


def planned_sweeps(args) -> list[tuple[Path, list[str]]]:
    """(sweep dir, overrides), seed by seed: the regression task first (it is the shortest), then each recipe."""
    out = []
    for seed in sorted(set(args.seeds) | set(args.regression_seeds)):
        if seed in args.regression_seeds:
            out.append((args.out / f"demo-overlap-s{seed}", regression_overrides(args, seed)))
        if seed in args.seeds:
            out += [(args.out / f"{recipe}-s{seed}{_pooling_suffix(args)}", sweep_overrides(args, recipe, seed))
                    for recipe in args.recipes]
    return out


def _pooling_suffix(args) -> str:
    """'' for the benchmark's poolings (both, one sweep), else '-<pooling>': a run of one pooling gets its own
    sweep dir (``run_or_resume`` refuses a dir planned with other jobs)."""
    return "" if set(args.poolings) == {"mean", "cls"} else "-" + "-".join(args.poolings)


def run_sweeps(args) -> int:
    code = 0
    if args.regression_seeds and not args.dry_run:
        from runner.synthetic import make_overlap_stsb

        glue = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "data" / "glue")
        make_overlap_stsb(glue, args.out / "overlap-glue")  # deterministic: the same files every time
    for sweep_dir, overrides in planned_sweeps(args):
        t0 = time.perf_counter()
        rc = run_or_resume(sweep_dir, overrides, dry_run=args.dry_run)
        if args.dry_run:
            continue
        print(f"bench_learn: {sweep_dir.name} exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc < 0 or rc in (130, 143):  # stopped by a signal: stop the benchmark too
            return rc
        code = code or rc
    return code


def collect(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob(f"*-s*/*/{RESULTS}")):
        results = read_completed(path.parent)
        if results is None:
            continue
        recipe = path.parent.parent.name.rsplit("-s", 1)[0]  # <recipe>-s<seed>[-<pooling>]
        trainer = _trainer_settings(path.parent)
        rows.append({
            "lr": trainer.get("lr"), "epochs": trainer.get("epochs"),
            "task": "overlap (stsb)" if results["task"] == "stsb" else results["task"], "recipe": recipe, "pooling": (results.get("head") or {}).get("pooling", "cls"),
            "seed": results["seed"], "metrics": results["metrics"], "main_metric": results["main_metric"],
            "trivial": (results.get("learning") or {}).get("trivial_metrics", {}),
            "train_s": (results.get("time") or {}).get("train_s"), "run_dir": str(path.parent),
            "best": _best_eval(results),
        })
    return rows


def _best_eval(results: dict) -> tuple[float, int] | None:
    """The best main metric over the run's evaluations (each epoch's, by default) and its epoch (1-based):
    the ceiling of a setting, optimistic as it is picked on the dev set it is reported on."""
    name = results.get("main_metric")
    evals = [(e[name], int(e.get("epoch", 0)) + 1) for e in results.get("eval_history") or [] if e.get(name) is not None]
    return max(evals) if evals else None


def _trainer_settings(run_dir: Path) -> dict:
    """The learning rate and epochs a run trained with, from its own config.yaml."""
    import yaml

    try:
        trainer = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("trainer") or {}
        return {"lr": float(trainer["lr"]), "epochs": int(trainer["epochs"])}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):  # PyYAML reads 2e-05 as a string
        return {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _key(r) -> tuple:
    return (r["task"], r["recipe"], r["pooling"], r.get("lr") or 0.0, r.get("epochs") or 0)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (task, recipe, pooling, lr, epochs); LoRA's gap to the best full
    fine-tuning row with the same task, pooling and epochs."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    table = []
    for (task, recipe, pooling, lr, epochs), runs in sorted(groups.items()):
        names = ["accuracy", "f1"] if task == "mrpc" else [runs[0]["main_metric"]]
        entry = {"task": task, "recipe": recipe, "pooling": pooling, "lr": lr, "epochs": epochs, "main": names[0],
                 "n": len(runs), "seeds": sorted(r["seed"] for r in runs),
                 "train_s_mean": statistics.fmean(r["train_s"] for r in runs if r["train_s"] is not None)}
        for name in names:
            m, s = _mean_std([100 * r["metrics"][name] for r in runs])
            entry[name] = {"mean": m, "std": s, "trivial": 100 * runs[0]["trivial"].get(name, float("nan"))}
        best = [r["best"] for r in runs if r.get("best")]
        if best:
            entry["best_eval"] = {"mean": statistics.fmean(100 * b[0] for b in best), "epochs": [b[1] for b in best]}
        table.append(entry)
    for entry in table:
        if entry["recipe"].startswith("lora"):
            fulls = [e for e in table if e["recipe"] == "full" and
                     (e["task"], e["pooling"], e["epochs"]) == (entry["task"], entry["pooling"], entry["epochs"])]
            if fulls:
                best = max(e[entry["main"]]["mean"] for e in fulls)
                entry["gap_to_full_points"] = entry[entry["main"]]["mean"] - best
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| task | recipe | pooling | lr | epochs | seeds | main metric (mean ± std) | majority / constant | MRPC F1 | "
             "LoRA − full | best eval (epoch) | train s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        main = e["main"]
        f1 = f"{e['f1']['mean']:.2f} ± {e['f1']['std']:.2f} (trivial {e['f1']['trivial']:.2f})" if "f1" in e else "-"
        gap = f"{e['gap_to_full_points']:+.2f}" if "gap_to_full_points" in e else "-"
        best = (f"{e['best_eval']['mean']:.2f} ({','.join(map(str, e['best_eval']['epochs']))})" if "best_eval" in e else "-")
        lr, epochs = (f"{e['lr']:g}" if e["lr"] else "-"), (e["epochs"] or "-")  # "-": the run has no config.yaml
        lines.append(f"| {e['task']} | {e['recipe']} | {e['pooling']} | {lr} | {epochs} | "
                     f"{e['n']} ({','.join(map(str, e['seeds']))}) | "
                     f"{main} {e[main]['mean']:.2f} ± {e[main]['std']:.2f} | {e[main]['trivial']:.2f} | {f1} | {gap} | "
                     f"{best} | {e['train_s_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    code = 0
    t0 = time.perf_counter()
    if not args.table_only:
        code = run_sweeps(args)
    if args.dry_run:
        return 0
    table = summarize(collect(args.out))
    text = markdown(table)
    targets = ("Targets: LoRA RTE accuracy >= 62, MRPC accuracy >= 82 and F1 >= 87, "
               "LoRA within 1.5 points of full fine-tuning with the same pooling.\n")
    print("\n" + text + targets)
    if not args.table_only:
        print(f"bench_learn: this invocation took {time.perf_counter() - t0:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text + "\n" + targets)
    (args.out / "summary.json").write_text(json.dumps(table, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
