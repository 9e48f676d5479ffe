#!/usr/bin/env python
"""SAFE vs plain adapter tuning on MiniLM: accuracy, memory, FLOPs, time, sharpness.

Runs one ``runner.sweep`` per method (tasks x seeds, every job its own
process; ``static`` one per task and seed, as its k comes from SAFE's run),
then prints per task: the main metric
(mean +- std over seeds, in points) and SAFE/baseline ratios of the mean
saved-for-backward bytes per step, peak saved bytes, total training FLOPs
(SAFE's probe included) and training wall time, plus the sharpness
(top Hessian eigenvalue). The table goes to ``<out>/summary.md`` and
``<out>/summary.json``. Rerunning the same command continues every sweep
(completed jobs skipped, interrupted ones resumed from their checkpoint). The
defaults are ``make repro-safe``'s recipe (LoRA r8 on every encoder linear
layer, lr 1e-3, 3 epochs, full training sets), so ``--from-sweep`` on that
target's output gives the same table without training again.

    python scripts/bench_safe.py                          # the full benchmark
    python scripts/bench_safe.py --tasks mrpc --seeds 1 --max-train-samples 64 --max-steps 4   # smoke
    python scripts/bench_safe.py --from-sweep outputs/repro-safe/minilm   # the table for runs `make repro-safe` made

Baselines through the same code path: ``--methods adapter safe static random``
(static freezes the lowest k adapters from step 0, k = SAFE's final frozen
count for the same task and seed; random uses SAFE's schedule, random order).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from runner.results import read_completed
from runner.run_files import STEPS
from runner.secrets import MASK  # how an older runner wrote safe.max_tokens: no setting of the run's
from runner.sweep import completed_runs, run_or_resume

# The MiniLM issue's targets (docs/safe.md); the depth benchmark passes its own (--target-*).
TARGETS = {"mean_memory": 0.55, "peak_memory": None, "flops": 0.70, "wall_time": 0.85, "metric_drop_points": 0.5}
# the ratios to the baseline, in table order, each with its column label (and a --target-* of the same key)
RATIO_COLUMNS = {"mean_memory": "mean memory", "peak_memory": "peak memory", "flops": "FLOPs", "wall_time": "wall time"}
METHODS = {
    "adapter": ["method=adapter"],
    "safe": ["method=safe"],
    "static": ["method=safe", "safe.policy=static"],
    "random": ["method=safe", "safe.policy=random"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "rte"], help="GLUE tasks (conf/task/glue/<task>.yaml)")
    p.add_argument("--methods", nargs="+", default=["adapter", "safe"], choices=list(METHODS),
                   help="adapter is the baseline; static needs safe in the list (it copies SAFE's frozen count)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--all-seeds", action="store_true", help="with --from-sweep: every seed found there, not only --seeds")
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="cap on training examples, the same for every method (default: the whole training set)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="cap on eval examples (default: the whole dev set)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--targets", default="all-linear",
                   help="LoRA target modules (default: every linear layer of the encoder, as make repro-safe)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="length-grouped batches (trainer.group_by_length, as make repro-safe; docs/measurement.md)")
    p.add_argument("--sharpness-batches", type=int, default=1, help="0 turns the sharpness measurement off")
    p.add_argument("--sharpness-iters", type=int, default=10)
    p.add_argument("--logger", default="none", help="runner logger (none or wandb)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench_safe; rerun to continue)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra runner override for every run (repeatable), e.g. --override safe.threshold=0.9")
    p.add_argument("--safe-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for the SAFE-family runs only (safe/static/random)")
    for key, flag, what in (("mean_memory", "mean-memory", "mean saved-for-backward memory ratio"),
                            ("peak_memory", "peak-memory", "peak saved-for-backward memory ratio (budget_mode)"),
                            ("flops", "flops", "whole-run FLOPs ratio"), ("wall_time", "wall-time", "training time ratio"),
                            ("metric_drop_points", "metric-drop", "metric drop in points")):
        p.add_argument(f"--target-{flag}", dest=f"target_{key}", type=_bound, default=TARGETS[key], metavar="X",
                       help=f"target: {what} at most X (default {TARGETS[key]}; 'none' reports without a mark)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--from-sweep", type=Path, nargs="+", default=None, metavar="DIR",
                   help="run nothing: tabulate the completed runs under each DIR (e.g. make repro-safe's sweep dir; "
                        "a frontier's setting dirs beside the LoRA runs); --tasks/--seeds/--methods still select")
    return p.parse_args(argv)


def _bound(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None


def targets_of(args) -> dict[str, float | None]:
    return {key: getattr(args, f"target_{key}") for key in TARGETS}


def common_overrides(args) -> list[str]:
    """What every run of the benchmark shares (the recipe, the caps, the measurements)."""
    o = [f"logger={args.logger}", f"trainer.epochs={args.epochs}", f"trainer.lr={args.lr}",
         f"trainer.batch_size={args.batch_size}", f"trainer.max_seq_length={args.max_seq_length}",
         "trainer.progress_bar=false", f"adapter.target_modules={args.targets}",
         f"trainer.group_by_length={str(args.group_by_length).lower()}"]
    for flag, key in ((args.max_train_samples, "task.max_train_samples"), (args.max_eval_samples, "task.max_eval_samples"),
                      (args.max_steps, "trainer.max_steps")):
        if flag:
            o.append(f"{key}={flag}")
    if args.sharpness_batches > 0:
        o += ["trainer.sharpness.enabled=true", f"trainer.sharpness.batches={args.sharpness_batches}",
              f"trainer.sharpness.iters={args.sharpness_iters}"]
    return o + list(args.override)


def method_overrides(args, method: str) -> list[str]:
    return [*METHODS[method], *(args.safe_override if method != "adapter" else [])]


def grid(values, fmt=str) -> str:
    return ",".join(fmt(v) for v in values)


def load_results(path: Path) -> dict | None:
    """A completed run's results, with its dir under ``_dir`` (None if the run did not complete)."""
    r = read_completed(path)
    if r is not None:
        r["_dir"] = str(path)
    return r


def settings(runs: list[dict]) -> str:
    """What the runs were trained with, read from their own config.yaml (not from this script's arguments)."""
    import yaml

    seen = []
    for r in runs:
        try:
            c = yaml.safe_load((Path(r["_dir"]) / "config.yaml").read_text())
        except (OSError, KeyError, yaml.YAMLError):
            continue
        a, t = c.get("adapter") or {}, c.get("trainer") or {}
        steps = f", max {t['max_steps']} steps" if t.get("max_steps") else ""
        text = (f"{c['model'].get('short_name')} + {a.get('name')} (r{a.get('r')}, {a.get('target_modules') if isinstance(a.get('target_modules'), str) else '/'.join(a.get('target_modules') or [])}), "
                f"lr {t.get('lr')}, batch {t.get('batch_size')}, max length {t.get('max_seq_length')}, {t.get('epochs')} epochs"
                f"{steps}, "
                f"train cap {c['task'].get('max_train_samples') or 'none'}, "
                f"{'length-grouped' if t.get('group_by_length') else 'ungrouped'} batches")
        sc = c.get("safe") if (c.get("method") or {}).get("name") == "safe" else None
        safe_text = (f"SAFE: importance {sc.get('importance', 'drift')}, T_final {sc.get('threshold')}, t_w {sc.get('t_w')}, "
                     f"t_f {sc.get('t_f')} ({sc.get('schedule_unit', 'fraction')}), every {sc.get('interval')} steps"
                     if sc else None)
        for item in (text, safe_text):
            if item and item not in seen:
                seen.append(item)
    return "; ".join(seen) or "unknown settings"


def run_sweeps(args) -> int:
    """adapter, safe and random: one sweep each over tasks x seeds; static: one per (task, seed), its k
    being SAFE's final frozen count there. Returns the first non-zero exit code (a signal stops at once)."""
    code = 0
    tasks, seeds = grid(args.tasks, lambda t: f"glue/{t}"), grid(args.seeds)
    for method in [m for m in ("adapter", "safe", "random") if m in args.methods]:
        rc = run_or_resume(args.out / method, [f"task={tasks}", f"seed={seeds}", *method_overrides(args, method),
                                               *common_overrides(args)], dry_run=args.dry_run)
        if rc in (130, 143) or rc < 0:
            return rc
        code = code or rc
    if "static" in args.methods:
        for safe_dir in completed_runs(args.out / "safe", "safe") if (args.out / "safe" / "sweep.json").is_file() else []:
            r = read_completed(safe_dir)
            rc = run_or_resume(args.out / f"static-{r['task']}-s{r['seed']}", [
                f"task=glue/{r['task']}", f"seed={r['seed']}", *method_overrides(args, "static"),
                f"safe.static_k={r['method_report']['n_frozen']}", *common_overrides(args)], dry_run=args.dry_run)
            if rc in (130, 143) or rc < 0:
                return rc
            code = code or rc
    return code


SAFE_KEYS_NOT_SETTINGS = ("policy", "seed", "static_k")  # the label's policy; the seed; static's k (from SAFE's run)


def safe_settings(run: dict) -> dict:
    """A SAFE-family run's ``safe`` settings from its own config.yaml ({} when unreadable)."""
    import yaml

    try:
        config = yaml.safe_load((Path(run["_dir"]) / "config.yaml").read_text()) or {}
    except (OSError, KeyError, yaml.YAMLError):
        return {}
    return {k: v for k, v in (config.get("safe") or {}).items() if k not in SAFE_KEYS_NOT_SETTINGS}


def setting_label(policy: str, settings: dict) -> str:
    """``policy`` and the settings where they differ from today's defaults: ``safe (t_f 0.5, threshold 0.5)``."""
    import dataclasses

    from runner.preflight.schema import SafeSettings

    defaults = {f.name: f.default for f in dataclasses.fields(SafeSettings)}
    changed = [f"{k} {v}" for k, v in settings.items() if k in defaults and v != defaults[k] and v != MASK]
    return f"{policy} ({', '.join(changed)})" if changed else policy


def from_sweep(args, roots: list[Path]) -> dict[str, dict[str, list[dict]]]:
    """Completed runs under ``roots`` (this benchmark's sweeps, make repro-safe's, a frontier's dirs), by task
    and method: SAFE-family runs by their freeze policy, and where one policy ran with several settings, each
    setting a row of its own, named by what differs from today's defaults (:func:`setting_label`)."""
    from runner.aggregate import find_results  # skips .retired/ attempts and .hydra/, as the report does

    by_task: dict[str, dict[str, list[dict]]] = {t: {m: [] for m in args.methods} for t in args.tasks}
    found = {path.parent.resolve(): path for root in roots for path in find_results(root)}  # a run once, however reached
    for path in found.values():
        r = load_results(path.parent)
        if r is None or r.get("task") not in by_task or (_seed(r) not in args.seeds and not args.all_seeds):
            continue
        method = r.get("method")
        if method == "safe":
            method = (r.get("method_report") or {}).get("policy") or "safe"
        if method in by_task[r["task"]]:
            by_task[r["task"]][method].append(r)
    for methods in by_task.values():
        for policy in [m for m in methods if m != "adapter"]:
            runs = [(r, safe_settings(r)) for r in methods[policy]]
            if len({repr(sorted(settings.items())) for _, settings in runs}) > 1:
                del methods[policy]
                for r, settings in runs:
                    methods.setdefault(setting_label(policy, settings), []).append(r)
    return {task: methods for task, methods in by_task.items() if any(methods.values())}


# ----------------------------------------------------------------- summary

def row(results: list[dict]) -> dict:
    """Means over seeds of the numbers the table compares."""
    def vals(fn):
        out = []
        for r in results:
            try:
                v = fn(r)
            except (KeyError, TypeError):
                v = None
            if v is not None:
                out.append(float(v))
        return out

    def mean(fn):
        v = vals(fn)
        return statistics.fmean(v) if v else None

    metric = vals(lambda r: 100 * r["metrics"][r["main_metric"]])
    return {
        "n": len(results),
        "metric_mean": statistics.fmean(metric) if metric else None,
        "metric_std": statistics.stdev(metric) if len(metric) > 1 else 0.0,
        "metric_values": metric,
        "saved_mean_bytes": mean(lambda r: r["memory"]["saved_for_backward_mean_bytes"]),
        "saved_peak_bytes": mean(lambda r: r["memory"]["saved_for_backward_peak_bytes"]),
        "saved_after_freeze_bytes": mean(lambda r: r["method_report"]["memory"]["saved_for_backward_mean_after_last_freeze_bytes"]),
        "train_flops": mean(lambda r: r["flops"]["train_total"]),
        "train_s": mean(lambda r: r["time"]["train_s"]),
        "step_mean_s": mean(lambda r: r["time"]["step_mean_s"]),
        "sharpness": mean(lambda r: r["sharpness"]["lambda_max"]),
        "n_frozen": mean(lambda r: r["method_report"]["n_frozen"]),
        "last_freeze_step": mean(lambda r: r["method_report"]["last_freeze_step"]),
        "total_steps": mean(lambda r: r["steps"]["total"]),
        "cuda_alloc_mean_bytes": mean(lambda r: r["memory"].get("cuda_allocated_mean_bytes")),
    }


def _seed(run: dict) -> int:
    return int(run.get("seed", -1))


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _steps(run: dict) -> list[dict]:
    """A run's steps.jsonl: its step history, one record per step in order (a resumed run's too: the file is
    rewritten whole from the history the checkpoint restored)."""
    try:
        lines = (Path(run["_dir"]) / STEPS).read_text().splitlines()
    except (OSError, KeyError):
        return []
    return [json.loads(line) for line in lines if line.strip()]


def step_flops(run: dict, base: dict | None) -> dict | None:
    """Training FLOPs per step of a SAFE-family run over its baseline's on the same batches (same task and
    seed; steps.jsonl's padded tokens equal step by step): ``after_last_freeze``, from the step after the
    last freeze on, probes left out, is what a step costs once the final frozen set is in place, so had that
    set been frozen from step 0 the whole-run ratio would be about it plus ``probe_share`` (the probes' FLOPs
    over the baseline's whole run). None without such a baseline run or a freeze."""
    last = (run.get("method_report") or {}).get("last_freeze_step")
    if base is None or last is None:
        return None
    steps, base_steps = _steps(run), _steps(base)
    if not steps or [s["step"] for s in steps] != [s["step"] for s in base_steps] or any(
            s.get("padded_tokens") != b.get("padded_tokens") for s, b in zip(steps, base_steps)):
        return None
    after = [(s, b) for s, b in zip(steps, base_steps) if s["step"] > last]
    base_total = sum(b["flops"] for b in base_steps)
    if not after or not base_total:
        return None
    return {"after_last_freeze": sum(s["flops"] for s, _ in after) / sum(b["flops"] for _, b in after),  # probes: method_flops
            "probe_share": sum(s.get("method_flops") or 0 for s in steps) / base_total}


def _mean_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def summarize(by_task: dict[str, dict[str, list[dict]]], targets: dict[str, float | None] = TARGETS) -> dict:
    summary = {}
    for task, methods in by_task.items():
        rows = {m: row(rs) for m, rs in methods.items() if rs}
        for m, r in rows.items():
            if "adapter" not in rows or m == "adapter":
                continue
            # ratios over the seeds both have (a frontier's setting may have fewer seeds than LoRA)
            seeds = {_seed(x) for x in methods[m]} & {_seed(x) for x in methods["adapter"]}
            if not seeds:
                continue
            base, r_paired = (row([x for x in methods[k] if _seed(x) in seeds]) for k in ("adapter", m))
            r["ratio_seeds"] = sorted(seeds)
            r["ratios"] = {
                "mean_memory": ratio(r_paired["saved_mean_bytes"], base["saved_mean_bytes"]),
                "peak_memory": ratio(r_paired["saved_peak_bytes"], base["saved_peak_bytes"]),
                "flops": ratio(r_paired["train_flops"], base["train_flops"]),
                "wall_time": ratio(r_paired["train_s"], base["train_s"]),
            }
            base_by_seed = {_seed(b): b for b in methods["adapter"]}
            paired = [step_flops(run, base_by_seed.get(_seed(run))) for run in methods[m]]
            r["step_flops"] = {key: _mean_of([p and p[key] for p in paired]) for key in ("after_last_freeze", "probe_share")}
            r["step_flops"]["paired_seeds"] = sum(p is not None for p in paired)
            drop = (base["metric_mean"] - r_paired["metric_mean"]
                    if None not in (base["metric_mean"], r_paired["metric_mean"]) else None)
            r["metric_drop_points"] = drop
            r["targets_met"] = {**{k: _le(r["ratios"][k], targets[k]) for k in RATIO_COLUMNS},
                                "metric": _le(drop, targets["metric_drop_points"])}
        summary[task] = rows
    return summary


def _le(value, bound):
    return None if value is None or bound is None else bool(value <= bound)


def _bound_text(bound, prefix="≤") -> str:
    return "" if bound is None else f" ({prefix}{bound:g})"


def _gb(x):
    return "-" if x is None else f"{x / 1e9:.3f}"


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def markdown(summary: dict, by_task: dict, targets: dict[str, float | None] = TARGETS) -> str:
    runs = [r for rows in by_task.values() for rs in rows.values() for r in rs]
    seeds = sorted({_seed(r) for r in runs})
    lines = [f"# SAFE benchmark ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"{settings(runs)}; seeds {seeds}. Memory = bytes saved for backward (CPU); wall time = training phase "
             "without evaluation. Ratios are SAFE/baseline of the means over the seeds both ran (paired seeds).", ""]
    for task, rows in summary.items():
        lines += [f"## {task}", "",
                  "| method | metric (mean ± std) | mean saved GB/step | peak saved GB | after last freeze GB | "
                  "train TFLOP | train s | λmax (Hessian) | frozen |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, r in rows.items():
            lines.append(
                f"| {m} | {_f(r['metric_mean'])} ± {_f(r['metric_std'])} | {_gb(r['saved_mean_bytes'])} | "
                f"{_gb(r['saved_peak_bytes'])} | {_gb(r['saved_after_freeze_bytes'])} | "
                f"{_f(r['train_flops'] and r['train_flops'] / 1e12, '{:.1f}')} | {_f(r['train_s'], '{:.0f}')} | "
                f"{_f(r['sharpness'], '{:.3g}')} | {_f(r['n_frozen'], '{:.1f}')} |")
        drop = targets["metric_drop_points"]
        header = ("| method / adapter | "
                  + "".join(f"{label}{_bound_text(targets[k])} | " for k, label in RATIO_COLUMNS.items())
                  + f"metric Δ points{_bound_text(None if drop is None else -drop, '≥ ')} | "
                  "step FLOPs after last freeze | probe FLOPs | paired seeds |")
        lines += ["", header, "|" + "---|" * (header.count("|") - 1)]  # as many columns as RATIO_COLUMNS makes
        for m, r in rows.items():
            if "ratios" not in r:
                continue
            t = r["targets_met"]
            mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
            q = r["ratios"]
            lines.append(
                f"| {m} | " + "".join(f"{_f(q[k], '{:.3f}')}{mark(t[k])} | " for k in RATIO_COLUMNS)
                + f"{_f(r['metric_drop_points'] and -r['metric_drop_points'], '{:+.2f}')}{mark(t['metric'])} | "
                f"{_f(r['step_flops']['after_last_freeze'], '{:.3f}')} | {_f(r['step_flops']['probe_share'], '{:.3f}')} | "
                f"{', '.join(map(str, r['ratio_seeds']))} |")
        lines += ["", "Step FLOPs after last freeze: a SAFE step's training FLOPs over LoRA's on the same batches (same "
                  "seed), from the step after the last freeze on, probes left out; with the probes' share of LoRA's "
                  "FLOPs, about the whole-run FLOPs ratio had the final frozen set been frozen from step 0.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if "static" in args.methods and "safe" not in args.methods:
        raise SystemExit("--methods static needs safe too (k = SAFE's final frozen count)")
    for folder in args.from_sweep or []:
        if not folder.is_dir():
            raise SystemExit(f"--from-sweep {folder}: no such folder")
    default_out = (args.from_sweep[0] / "bench_safe" if args.from_sweep
                   else REPO / "outputs" / "bench_safe")  # fixed: rerunning the command continues it
    args.out = args.out or default_out
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    start = time.perf_counter()
    code = 0
    if not args.from_sweep:
        code = run_sweeps(args)
        if args.dry_run:
            return 0
        if code in (130, 143) or code < 0:
            return code
    by_task = from_sweep(args, args.from_sweep or [args.out])
    summary = summarize(by_task, targets_of(args))
    text = markdown(summary, by_task, targets_of(args))
    (args.out / "summary.md").write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(text)
    print(f"\n{args.out / 'summary.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    if code:
        print(f"bench_safe: not every job completed (exit {code}); each sweep's sweep_summary.md under {args.out} "
              "says which and why; rerun the command to continue", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
