"""Tables and plots from every ``results.json`` under a sweep dir (or all of ``outputs/``).

    python scripts/aggregate.py outputs/multiruns/<stamp>          # or: python -m runner.aggregate
    python scripts/aggregate.py outputs --baseline adapter --out reports/all

Writes into ``--out`` (default ``<path>/report``):

* ``runs.csv``: one row per results.json, every scalar flattened (``memory.param_bytes``);
* ``summary.csv``: mean/std/n over seeds per (model, task, method, adapter, --by keys),
  with ratios of memory, FLOPs and time to the baseline method;
* ``pruning.csv``: mean/std/n over seeds per (model, task, criterion, ratio) when runs prune heads;
* ``problems.csv``: failed, interrupted, unfinished and never-started jobs;
* ``report.md``: the markdown tables below (also printed), and PNG plots.

Tables: the SAFE paper's main-table layout (methods x tasks, average, memory, FLOPs and
time with ratios to the baseline); a per-task efficiency table (every memory measure,
FLOPs, time); the HIES paper's Tables 1 and 2 layout (metric and stability per task and
pruning ratio, one row per criterion); and the list of runs that did not complete.
Only completed runs are averaged; every other run is listed, never dropped silently.

Missing values print as ``-``. Pruning curves and Table 1 show the trivial level (the task
metric of a constant prediction: the majority class, or the training mean for regression) and mark
the cells where pruning collapsed the model to it.

The key names of sections written by other parts of the runner (``pruning``, ``method_report``,
``learning``) are read in :func:`pruning_entries`, :func:`freeze_steps` and :func:`trivial_level` only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from runner.curves import MARGIN
from runner import runs
from runner.results import flatten

GLUE_ORDER = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
GROUP_KEYS = ["model", "task", "method", "adapter"]  # more with --by (e.g. prune.name, trainer.lr)
# runs.csv column -> label; memory in bytes, FLOPs, seconds
EFFICIENCY = {
    "memory.saved_for_backward_mean_bytes": "saved for backward, mean",
    "memory.saved_for_backward_peak_bytes": "saved for backward, peak",
    "memory.state_plus_saved_peak_bytes": "state + saved, peak",
    "memory.cuda_peak_allocated_bytes": "CUDA peak allocated",
    "memory.cuda_peak_reserved_bytes": "CUDA peak reserved",
    "flops.train_total": "train FLOPs",
    "time.train_s": "train time (s)",
}
SKIP_FLATTEN = {"eval_history"}
MISSING = "-"  # what a table shows for a value that is not there


# ----------------------------------------------------- other sections' key names


def pruning_entries(results: dict) -> tuple[list[dict], dict | None]:
    """Head-pruning results (HIES, ``runner.prune``): one entry per (criterion, ratio), and the unpruned reference.

    Reads ``pruning.results[*].{criterion, ratio, main_metric, stability, flops_ratio, params_ratio}``
    and ``pruning.unpruned.main_metric``; also accepts a bare list of entries and ``metric``
    instead of ``main_metric``.
    """
    section = results.get("pruning")
    if not section:
        return [], None
    entries = section.get("results", []) if isinstance(section, dict) else section
    out = []
    for e in entries or []:
        metric = e.get("main_metric", e.get("metric"))
        if isinstance(metric, dict):  # {"accuracy": ...}: the task's main metric
            metric = metric.get(results.get("main_metric"))
        out.append({"criterion": e.get("criterion"), "ratio": e.get("ratio"), "metric": metric,
                    "stability": e.get("stability"), "flops_ratio": e.get("flops_ratio"),
                    "params_ratio": e.get("params_ratio")})
    unpruned = section.get("unpruned") if isinstance(section, dict) else None
    reference = {"metric": unpruned.get("main_metric")} if isinstance(unpruned, dict) else None
    return out, reference


def freeze_steps(results: dict) -> tuple[dict[str, int | None], int] | None:
    """Adapter freezing (SAFE): the step each adapter froze at (None: never) and the run's total steps.

    Reads ``method_report.adapters.<name>.freeze_step`` and ``steps.total``
    (or ``method_report.schedule_steps.total``).
    """
    report = results.get("method_report") or {}
    adapters = report.get("adapters")
    if not isinstance(adapters, dict) or not adapters:
        return None
    steps = {name: (a.get("freeze_step") if isinstance(a, dict) else None) for name, a in adapters.items()}
    total = (results.get("steps") or {}).get("total") or (report.get("schedule_steps") or {}).get("total")
    return (steps, int(total)) if total else None


def trivial_level(results: dict) -> dict | None:
    """The main metric of a constant prediction on the eval split: ``{"trivial": value, "trivial_what": label}``.

    Reads ``learning.trivial`` and ``learning.trivial_prediction`` (:mod:`runner.curves`; a float
    prediction is the training mean of a regression task, else the majority class). A pruning job on a
    saved run has no ``learning`` section: it is read from the ``results.json`` in ``source_run``.
    None when unknown (runs older than the learning check, a source run that moved).
    """
    learning = results.get("learning")
    if not isinstance(learning, dict) and results.get("source_run"):
        learning = (runs.read(Path(results["source_run"])) or {}).get("learning")
    if not isinstance(learning, dict) or learning.get("trivial") is None:
        return None
    regression = isinstance(learning.get("trivial_prediction"), float)
    return {"trivial": float(learning["trivial"]), "trivial_what": "constant prediction" if regression else "majority class"}


# ------------------------------------------------------------------ collecting


def _hidden(path: Path, root: Path) -> bool:
    """Inside .hydra/, .retired/ (superseded attempts), .submitit/, a checkpoint temp dir..."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    return any(p.startswith(".") for p in parts[:-1])


def find_results(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("results.json") if not _hidden(p, root) and "wandb" not in p.parts)


def _load_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _config_value(cfg: dict, dotted: str):
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# Config keys that may differ between the seeds of one group without mixing settings.
PER_RUN_KEYS = ("seed", "output_dir", "run_name", "data_cache_dir", "logger", "debug", "resume", "hydra",
                "prune.from_run", "task.data_dir", "trainer.progress_bar")


def settings_of(cfg: dict) -> dict:
    """A run's settings: its flattened config without what legitimately differs per run (seeds, paths, logging)."""
    def per_run(key: str) -> bool:
        return key.endswith(".seed") or any(key == k or key.startswith(k + ".") for k in PER_RUN_KEYS)

    return {k: v for k, v in flatten(cfg, sep=".").items() if not per_run(k)}


def differing_settings(settings: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run. Runs without a config.yaml are
    skipped, and so are keys some configs lack (added to the project after those runs)."""
    settings = [s for s in settings if s]
    keys = sorted(set.intersection(*(set(s) for s in settings))) if settings else []
    return [k for k in keys if len({repr(s[k]) for s in settings}) > 1]


SWEEP_KEY = "sweep"  # --by sweep: the folder that holds the run (a sweep dir, or outputs/runs)


def _sweep_of(run_dir: Path, root: Path | None) -> str:
    """The folder holding a run, relative to the folder the report reads (its own name if that is the holder)."""
    parent = Path(run_dir).parent
    if root is None or Path(root).is_file():
        return parent.name
    root = Path(root)
    rel = os.path.relpath(parent, root)
    return root.name if rel == "." else rel


def run_row(results: dict, run_dir: Path, cfg: dict, by: list[str], root: Path | None = None) -> dict:
    source = results.get("source") or {}  # a pruning job on a saved run
    prune = _config_value(cfg, "prune.name") or ("none" if not results.get("pruning") else "?")
    row = {
        "path": str(run_dir),
        "status": results.get("status", "unknown"),
        "task": results.get("task") or _config_value(cfg, "task.name"),
        "model": results.get("model") or _config_value(cfg, "model.short_name"),
        "method": results.get("method") or _config_value(cfg, "method.name"),
        "adapter": results.get("adapter", source.get("adapter")) or "-",
        "prune": prune,
        "seed": results.get("seed", source.get("seed", _config_value(cfg, "seed"))),
        "run_name": results.get("run_name"),
        "main_metric": results.get("main_metric"),
        "metric": (results.get("metrics") or {}).get(results.get("main_metric")) if results.get("main_metric") else None,
        "error": results.get("error"),
        "step": results.get("step"),
    }
    policy = (results.get("method_report") or {}).get("policy")
    if row["method"] == "safe" and policy not in (None, "safe"):  # SAFE's baselines are methods of their own
        row["method"] = f"safe:{policy}"
    for key in by:
        row[f"cfg.{key}"] = _sweep_of(run_dir, root) if key == SWEEP_KEY else _config_value(cfg, key)
    row["_settings"] = settings_of(cfg)  # not written to runs.csv
    row.update({k: v for k, v in flatten(results, sep=".", skip=SKIP_FLATTEN).items() if k not in row})
    return row


def collect(paths: list[Path], by: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(runs, problems, raw): one row per results.json; problems also holds job dirs without one."""
    by = list(by or [])
    rows, problems, raw = [], [], []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise SystemExit(f"error: {root} does not exist")
        for path in find_results(root):
            run_dir = path.parent
            try:
                results = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                problems.append({"path": str(run_dir), "status": "unreadable", "error": f"{type(exc).__name__}: {exc}"})
                continue
            cfg = _load_config(run_dir)
            row = run_row(results, run_dir, cfg, by, root)
            rows.append(row)
            raw.append({"row": row, "results": results, "dir": run_dir})
        problems.extend(_jobs_without_results(root))
    runs = pd.DataFrame(rows)
    if runs.empty:
        runs = pd.DataFrame(columns=["path", "status", *GROUP_KEYS, "seed", "metric"])
    not_completed = runs[runs["status"] != "completed"]
    listed = [{k: r.get(k) for k in ("path", "status", "task", "model", "method", "seed", "step", "error")}
              for r in not_completed.to_dict("records")]
    problems_df = pd.DataFrame(listed + problems,
                               columns=["path", "status", "task", "model", "method", "seed", "step", "error"])
    problems_df["step"] = pd.to_numeric(problems_df["step"], errors="coerce").astype("Int64")
    return runs, problems_df, raw


def _jobs_without_results(root: Path) -> list[dict]:
    """Hydra job dirs with no results.json (killed, still running) and sweep jobs never started."""
    out = []
    seen = set()
    if root.is_file():
        return out
    for hydra_dir in root.rglob(".hydra"):
        run_dir = hydra_dir.parent
        if _hidden(hydra_dir, root) or (run_dir / "results.json").is_file():
            continue
        seen.add(run_dir.resolve())
        has_ckpt = (run_dir / "checkpoint" / "meta.json").is_file()
        out.append({"path": str(run_dir), "status": "no results" + (" (checkpoint: resumable)" if has_ckpt else ""),
                    "error": "no results.json: still running, or killed before writing one"})
    for marker in [*root.rglob("multirun.yaml"), *root.rglob("sweep.json")]:
        sweep_dir = marker.parent
        if _hidden(marker, root) or (marker.name == "multirun.yaml" and (sweep_dir / "sweep.json").is_file()):
            continue
        try:
            from runner.sweep import load_plan

            jobs, _ = load_plan(sweep_dir)
        except (SystemExit, Exception):  # noqa: BLE001 (not a grid sweep: nothing to compare against)
            continue
        for job in jobs:
            if not Path(job.dir).exists():
                out.append({"path": job.dir, "status": "not started",
                            "error": f"job {job.num} of the sweep never ran ({' '.join(job.overrides)})"})
    return out


# ------------------------------------------------------------------ statistics


def _order(values, first: list[str] | None = None) -> list:
    values = list(dict.fromkeys(values))
    first = [v for v in dict.fromkeys(first or []) if v in values]
    return first + sorted(v for v in values if v not in first)


def task_order(tasks) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    return [t for t in GLUE_ORDER if t in tasks] + sorted(t for t in tasks if t not in GLUE_ORDER)


def summarize_runs(runs: pd.DataFrame, baseline: str = "adapter", by: list[str] | None = None) -> pd.DataFrame:
    """Mean, std (over seeds, ddof=1) and n per group of completed runs; ratios of efficiency means to the baseline."""
    keys = GROUP_KEYS + [f"cfg.{k}" for k in (by or [])]
    done = runs[runs["status"] == "completed"].copy()
    if done.empty:
        return pd.DataFrame(columns=keys)
    for k in keys:
        done[k] = done[k].fillna("-").astype(str)
    columns = ["metric"] + [c for c in EFFICIENCY if c in done.columns and done[c].notna().any()]
    done[columns] = done[columns].apply(pd.to_numeric, errors="coerce")
    grouped = done.groupby(keys, sort=False, dropna=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["n"] = grouped.size()
    stats["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(x) for x in sorted(s.dropna().unique(), key=str)))
    stats = stats.reset_index()
    dup = grouped["seed"].apply(lambda s: s.duplicated().any()).reset_index(drop=True)
    stats["duplicate_seeds"] = dup.values  # the same seed twice: the group mixes settings (use --by)
    if "_settings" in done:  # runs averaged together should differ only in their seed
        mixed = grouped["_settings"].apply(lambda s: ",".join(differing_settings(list(s)))).reset_index(drop=True)
        stats["mixed_settings"] = mixed.values
    else:
        stats["mixed_settings"] = ""
    for col in columns[1:]:
        stats[f"{col}_ratio"] = [_ratio(stats, i, col, baseline, keys) for i in range(len(stats))]
    return stats


def _baseline_row(stats: pd.DataFrame, i: int, baseline: str, keys: list[str]) -> int | None:
    row = stats.iloc[i]
    same = [k for k in keys if k not in ("method", "adapter")]
    mask = np.ones(len(stats), dtype=bool)
    for k in same:
        mask &= (stats[k] == row[k]).to_numpy()
    mask &= (stats["method"] == baseline).to_numpy()
    exact = mask & (stats["adapter"] == row["adapter"]).to_numpy()
    for candidate in (exact, mask):
        idx = np.flatnonzero(candidate)
        if len(idx) == 1:
            return int(idx[0])
    return None


def _ratio(stats: pd.DataFrame, i: int, col: str, baseline: str, keys: list[str]) -> float:
    j = _baseline_row(stats, i, baseline, keys)
    if j is None:
        return float("nan")
    base = stats.iloc[j][f"{col}_mean"]
    value = stats.iloc[i][f"{col}_mean"]
    return float(value / base) if base and not pd.isna(base) and not pd.isna(value) else float("nan")


def collapsed(metric, trivial) -> bool | None:
    """Whether a metric is not above the trivial level (by :data:`runner.curves.MARGIN`, the learning
    check's rule): the model predicts (almost) one class. None when either is unknown."""
    if _missing(metric) or _missing(trivial):
        return None
    return bool(metric <= trivial + MARGIN)


def summarize_pruning(raw: list[dict]) -> pd.DataFrame:
    """Mean/std/min/max/n over seeds of metric and stability per (model, task, method, criterion, ratio).

    Ratio 0 is the unpruned model (stability 1: it agrees with itself). ``trivial``: the mean trivial
    level of the runs (NaN: unknown); ``collapsed_n``: how many of the runs are not above it.
    """
    rows = []
    for item in raw:
        row, results = item["row"], item["results"]
        if row["status"] != "completed":
            continue
        entries, reference = pruning_entries(results)
        base = {k: row[k] for k in ("model", "task", "method", "adapter", "seed")}
        base.update(trivial_level(results) or {"trivial": None, "trivial_what": None})
        for e in entries:
            rows.append({**base, **e})
        if reference is not None and reference.get("metric") is not None:
            for crit in dict.fromkeys(e["criterion"] for e in entries):
                rows.append({**base, "criterion": crit, "ratio": 0.0, "metric": reference["metric"], "stability": 1.0,
                             "flops_ratio": 1.0, "params_ratio": 1.0})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = ["model", "task", "method", "adapter", "criterion", "ratio"]
    for col in ("metric", "stability", "flops_ratio", "params_ratio", "trivial"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["collapsed"] = [collapsed(m, t) is True for m, t in zip(df["metric"], df["trivial"])]
    grouped = df.groupby(keys, sort=False, dropna=False)
    stats = grouped[["metric", "stability", "flops_ratio", "params_ratio"]].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["n"] = grouped.size()
    stats["trivial"] = grouped["trivial"].mean()
    stats["trivial_what"] = grouped["trivial_what"].first()
    stats["collapsed_n"] = grouped["collapsed"].sum().astype(int)
    return stats.reset_index().sort_values(["model", "task", "criterion", "ratio"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ formatting


def _pm(mean, std, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None or pd.isna(mean):
        return MISSING
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not pd.isna(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _unit(values, kind: str) -> tuple[float, str]:
    finite = [abs(v) for v in values if v is not None and not pd.isna(v)]
    top = max(finite, default=0.0)
    if kind == "bytes":
        return (2**30, "GiB") if top >= 2**30 else (2**20, "MiB")
    if kind == "flops":
        for scale, name in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
            if top >= scale:
                return scale, name
        return 1e6, "MFLOP"
    return 1.0, "s"


def _kind(col: str) -> str:
    return "bytes" if col.startswith("memory.") else "flops" if col.startswith("flops.") else "seconds"


def _ratio_text(r) -> str:
    return MISSING if r is None or pd.isna(r) else f"{r:.2f}×"


def _number(value, digits: int = 3) -> str:
    """``digits`` significant digits in plain notation (``2140``, ``37.5``, ``0.00123``; never ``2.14e+03``)."""
    if _missing(value) or not math.isfinite(value):
        return MISSING
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _missing(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or array
        return False


def markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [MISSING if _missing(v) else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _method_label(row, stats: pd.DataFrame) -> str:
    label = row["method"]
    if stats.groupby("method")["adapter"].nunique().max() > 1 and row["adapter"] != "-":
        label += f" ({row['adapter']})"
    for c in stats.columns:
        if c.startswith("cfg."):
            label += f" {c[4:]}={row[c]}"
    return label


def main_table(stats: pd.DataFrame, model: str, baseline: str) -> pd.DataFrame:
    """SAFE's main-table layout for one model: methods x (tasks, average, memory, FLOPs, time, ratios).

    Task cells: main metric x100, mean ± std over seeds. Peak memory is the CUDA peak when every
    run has one, else the CPU estimate (state + saved-for-backward peak); mean saved/step is the
    activation memory autograd keeps, averaged over steps (what SAFE's freezing cuts: its peak
    comes from the first steps, when every adapter still trains). Memory, FLOPs
    and time are means over tasks; their ratio is the mean over tasks of the per-task ratio
    to the baseline.
    """
    s = stats[stats["model"] == model].copy()
    if s.empty:
        return pd.DataFrame()
    s["label"] = [_method_label(r, s) for _, r in s.iterrows()]
    tasks = task_order(s["task"])
    mem_col = "memory.cuda_peak_allocated_bytes" if "memory.cuda_peak_allocated_bytes_mean" in s and s[
        "memory.cuda_peak_allocated_bytes_mean"].notna().all() else "memory.state_plus_saved_peak_bytes"
    eff = [(mem_col, "peak memory"), ("memory.saved_for_backward_mean_bytes", "mean saved/step"),
           ("flops.train_total", "train FLOPs"), ("time.train_s", "train time")]
    eff = [(c, n) for c, n in eff if f"{c}_mean" in s]
    units = {c: _unit(s[f"{c}_mean"], _kind(c)) for c, _ in eff}
    rows = []
    for label in _order(s["label"], first=[l for l in s["label"] if l.split(" ")[0] == baseline]):
        g = s[s["label"] == label]
        out = {"method": label}
        means = []
        for t in tasks:
            gt = g[g["task"] == t]
            if gt.empty:
                out[t.upper()] = MISSING
                continue
            r = gt.iloc[0]
            out[t.upper()] = _pm(r["metric_mean"], r["metric_std"], 100) + ("" if r["n"] > 1 else " (n=1)")
            means.append(r["metric_mean"])
        avg = float(np.mean(means)) * 100 if means else float("nan")
        out["avg"] = f"{avg:.2f}" + ("" if len(means) == len(tasks) else "*") if means else MISSING
        for c, name in eff:
            scale, unit = units[c]
            out[f"{name} ({unit})"] = _number(g[f"{c}_mean"].mean() / scale)
            ratio = g[f"{c}_ratio"].mean() if f"{c}_ratio" in g else float("nan")
            out[f"{name} ×{baseline}"] = _ratio_text(ratio)
        rows.append(out)
    return pd.DataFrame(rows)


def _short_keys(keys: str, n: int = 3) -> str:
    keys = [k for k in str(keys).split(",") if k]
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def mixed_groups_note(stats: pd.DataFrame) -> str:
    """A warning for the report when some mean mixes runs trained with different settings."""
    if "mixed_settings" not in stats or not stats["mixed_settings"].astype(bool).any():
        return ""
    lines = [f"- {r['model']} / {r['task']} / {r['method']}: {_short_keys(r['mixed_settings'], 6)}"
             for _, r in stats[stats["mixed_settings"].astype(bool)].iterrows()]
    return ("**Warning: some means pool runs with different settings** (not just different seeds). Report one "
            "sweep dir at a time, or split the groups with `--by <key>` (e.g. `--by trainer.lr`, or `--by sweep` "
            "for one group per sweep dir):\n\n"
            + "\n".join(lines) + "\n")


def efficiency_table(stats: pd.DataFrame, model: str, baseline: str) -> pd.DataFrame:
    """Per task and method: n, metric, every memory measure, FLOPs, time; ratios to the baseline."""
    s = stats[stats["model"] == model].copy()
    if s.empty:
        return pd.DataFrame()
    s["label"] = [_method_label(r, s) for _, r in s.iterrows()]
    cols = [c for c in EFFICIENCY if f"{c}_mean" in s and s[f"{c}_mean"].notna().any()]
    units = {c: _unit(s[f"{c}_mean"], _kind(c)) for c in cols}
    rows = []
    for t in task_order(s["task"]):
        st = s[s["task"] == t]
        for label in _order(st["label"], first=[l for l in st["label"] if l.split(" ")[0] == baseline]):
            r = st[st["label"] == label].iloc[0]
            out = {"task": t.upper(), "method": label, "n": int(r["n"]), "seeds": r["seeds"],
                   "metric": _pm(r["metric_mean"], r["metric_std"], 100)}
            for c in cols:
                scale, unit = units[c]
                label_c = EFFICIENCY[c].replace(" (s)", "")
                digits = 1 if _kind(c) == "seconds" else 3
                out[f"{label_c} ({unit})"] = _pm(r[f"{c}_mean"], r[f"{c}_std"], 1 / scale, digits) + (
                    f" [{_ratio_text(r[f'{c}_ratio'])}]" if not pd.isna(r[f"{c}_ratio"]) else "")
            if r.get("mixed_settings"):
                out["n"] = f"{out['n']} (settings differ: {_short_keys(r['mixed_settings'])}; split with --by)"
            elif r.get("duplicate_seeds"):
                out["n"] = f"{out['n']} (seed repeated: settings mixed, use --by)"
            rows.append(out)
    return pd.DataFrame(rows)


def pruning_table(pstats: pd.DataFrame, model: str, value: str) -> pd.DataFrame:
    """HIES Tables 1/2 layout: rows = criterion (and training method), columns = task @ ratio; mean ± std over seeds.

    ``value`` is ``metric`` (x100; the 0% column is the unpruned model) or ``stability``. The metric table
    marks cells whose runs collapsed to the trivial level and ends with a row of that level.
    """
    p = pstats[pstats["model"] == model]
    if value == "stability":
        p = p[p["ratio"] > 0]
    if p.empty:
        return pd.DataFrame()
    multi_method = p["method"].nunique() > 1
    scale = 100 if value == "metric" else 1
    digits = 2 if value == "metric" else 3
    columns = [(t, r) for t in task_order(p["task"]) for r in sorted(p[p["task"] == t]["ratio"].unique())]
    rows = []
    for (method, crit), g in p.groupby(["method", "criterion"], sort=False):
        out = {"criterion": f"{crit} ({method})" if multi_method else crit}
        for t, ratio in columns:
            cell = g[(g["task"] == t) & (g["ratio"] == ratio)]
            out[f"{t.upper()} {ratio:.0%}"] = MISSING if cell.empty else _pruning_cell(cell.iloc[0], value, scale, digits)
        rows.append(out)
    if value == "metric":
        rows.append(_trivial_row(p, columns))
    return pd.DataFrame(rows)


def _pruning_cell(r, value: str, scale: float, digits: int) -> str:
    """Mean ± std; for the metric, ``(collapsed)`` when every run is at the trivial level (``(k/n collapsed)``: some)."""
    text = _pm(r[f"{value}_mean"], r[f"{value}_std"], scale, digits)
    if value != "metric" or not r["collapsed_n"]:
        return text
    return text + (" (collapsed)" if r["collapsed_n"] == r["n"] else f" ({r['collapsed_n']}/{r['n']} collapsed)")


def _trivial_row(p: pd.DataFrame, columns: list[tuple]) -> dict:
    """Table 1's last row: each task's trivial level x100 in every column of the task (``-``: unknown)."""
    whats = list(dict.fromkeys(p["trivial_what"].dropna()))
    out = {"criterion": " / ".join(whats) or "majority class / constant prediction"}
    for t, ratio in columns:
        out[f"{t.upper()} {ratio:.0%}"] = _pm(p[p["task"] == t]["trivial"].mean(), None, 100)
    return out


# ---------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path | None:
    """Write a figure (None: nothing to draw) as PNG and close it."""
    if fig is None:
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def plot_efficiency(stats: pd.DataFrame, model: str, baseline: str, path: Path) -> Path | None:
    """:func:`efficiency_figure` as a PNG."""
    return _save(efficiency_figure(stats, model, baseline), path)


def efficiency_figure(stats: pd.DataFrame, model: str, baseline: str):
    """Bars of memory, train FLOPs and train time per method, grouped by task; error bars: std over seeds.

    A method without a value in a panel (e.g. ``prune:hies`` jobs, which train nothing) gets no bars
    there, and no legend entry unless another panel has its bars.
    """
    s = stats[stats["model"] == model].copy()
    if s.empty:
        return None
    plt = _plt()
    s["label"] = [_method_label(r, s) for _, r in s.iterrows()]
    tasks = task_order(s["task"])
    labels = _order(s["label"], first=[l for l in s["label"] if l.split(" ")[0] == baseline])
    mem = "memory.cuda_peak_allocated_bytes" if "memory.cuda_peak_allocated_bytes_mean" in s and s[
        "memory.cuda_peak_allocated_bytes_mean"].notna().all() else "memory.state_plus_saved_peak_bytes"
    # mean saved-for-backward bytes per step: what freezing lowers over a run (the peak is usually the first steps)
    saved = "memory.saved_for_backward_mean_bytes"
    panels = [(c, t) for c, t in ((saved, EFFICIENCY[saved] + " per step"), (mem, EFFICIENCY[mem]),
                                  ("flops.train_total", "train FLOPs"), ("time.train_s", "train time"))
              if f"{c}_mean" in s and s[f"{c}_mean"].notna().any()]
    if not panels:  # e.g. only pruning jobs on saved runs: nothing was trained here
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    x = np.arange(len(tasks))
    legend = {}
    for ax, (col, title) in zip(axes[0], panels):
        scale, unit = _unit(s[f"{col}_mean"], _kind(col))
        series = []  # (colour index, label, means, stds) of the methods with a value here
        for i, label in enumerate(labels):
            g = s[s["label"] == label].set_index("task")
            means = [g[f"{col}_mean"].get(t, np.nan) / scale for t in tasks]
            if not np.isnan(means).all():
                series.append((i, label, means, [np.nan_to_num(g[f"{col}_std"].get(t, np.nan) / scale) for t in tasks]))
        width = 0.8 / len(series)
        for j, (i, label, means, stds) in enumerate(series):
            bars = ax.bar(x + (j - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=2, color=f"C{i}")
            legend.setdefault(label, bars)
        ax.set_xticks(x, [t.upper() for t in tasks])
        ax.set_title(f"{title} ({unit})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(list(legend.values()), list(legend), fontsize=8)
    fig.suptitle(f"{model}: cost per method (mean ± std over seeds)", fontsize=11)
    return fig


def plot_freeze_timelines(raw: list[dict], model: str, task: str, path: Path) -> Path | None:
    """Fraction of adapters frozen over training, one line per run; and each adapter's freeze point per seed."""
    runs = [(item["row"], freeze_steps(item["results"])) for item in raw
            if item["row"]["model"] == model and item["row"]["task"] == task and item["row"]["status"] == "completed"]
    runs = [(row, fs) for row, fs in runs if fs is not None]
    if not runs:
        return None
    plt = _plt()
    fig, (ax_frac, ax_layer) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(dict.fromkeys(n for _, (steps, _) in runs for n in steps))
    colors = {}
    for row, (steps, total) in sorted(runs, key=lambda x: (str(x[0]["method"]), str(x[0]["seed"]))):
        color = colors.setdefault(row["method"], f"C{len(colors)}")
        frozen = sorted(s for s in steps.values() if s is not None)
        xs = [0.0] + [s / total for s in frozen] + [1.0]
        ys = [0.0] + [(i + 1) / len(steps) for i in range(len(frozen))] + [len(frozen) / len(steps)]
        ax_frac.step(xs, ys, where="post", color=color, alpha=0.8, label=f"{row['method']} s{row['seed']}")
        ax_layer.scatter([steps[n] / total if steps.get(n) is not None else 1.02 for n in names], range(len(names)),
                         color=color, alpha=0.7, s=18)
    ax_frac.set_xlabel("training progress (step / total)")
    ax_frac.set_ylabel("fraction of adapters frozen")
    ax_frac.set_ylim(-0.02, 1.02)
    ax_frac.legend(fontsize=7)
    ax_layer.set_yticks(range(len(names)), names, fontsize=7)
    ax_layer.set_xlabel("freeze point (step / total; >1: never)")
    ax_layer.set_xlim(-0.02, 1.06)
    for ax in (ax_frac, ax_layer):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model} {task.upper()}: adapter freezing ({len(runs)} runs)", fontsize=11)
    return _save(fig, path)


def plot_pruning(pstats: pd.DataFrame, model: str, task: str, path: Path) -> Path | None:
    """:func:`pruning_figure` as a PNG."""
    return _save(pruning_figure(pstats, model, task), path)


def pruning_figure(pstats: pd.DataFrame, model: str, task: str):
    """Metric and stability against the pruning ratio, one line per criterion, from the unpruned model at 0;
    band: min–max over seeds. The trivial level is a dashed line (none when unknown)."""
    p = pstats[(pstats["model"] == model) & (pstats["task"] == task)]
    if p.empty:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, ((method, crit), g) in enumerate(p.groupby(["method", "criterion"], sort=False)):
        g = g.sort_values("ratio")
        label = crit if p["method"].nunique() == 1 else f"{crit} ({method})"
        for ax, value in zip(axes, ("metric", "stability")):
            h = g[g[f"{value}_mean"].notna()]
            if h.empty:
                continue
            ax.plot(h["ratio"], h[f"{value}_mean"], marker="o", ms=3, color=f"C{i}", label=f"{label} (n={int(h['n'].max())})")
            ax.fill_between(h["ratio"], h[f"{value}_min"], h[f"{value}_max"], color=f"C{i}", alpha=0.15)
    trivial = p["trivial"].mean()
    if not pd.isna(trivial):
        axes[0].axhline(trivial, color="black", ls="--", lw=1,
                        label=f"{' / '.join(dict.fromkeys(p['trivial_what'].dropna()))} ({trivial:.3f})")
    axes[0].set_ylabel("task metric")
    axes[1].set_ylabel("stability")
    for ax in axes:
        ax.set_xlabel("fraction of heads pruned")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{model} {task.upper()}: head pruning (mean over seeds, band: min–max)", fontsize=11)
    return fig


# ------------------------------------------------------------------------ report


def build_report(paths: list[Path], out: Path, baseline: str = "adapter", by: list[str] | None = None,
                 plots: bool = True) -> dict:
    """Collect, write the CSVs, markdown and PNGs; returns what was written and the tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, problems, raw = collect(paths, by)
    stats = summarize_runs(runs, baseline, by)
    pstats = summarize_pruning(raw)
    runs.drop(columns=[c for c in runs.columns if c.startswith("_")]).to_csv(out / "runs.csv", index=False)
    stats.to_csv(out / "summary.csv", index=False)
    problems.to_csv(out / "problems.csv", index=False)
    if not pstats.empty:
        pstats.to_csv(out / "pruning.csv", index=False)

    n_done = int((runs["status"] == "completed").sum()) if not runs.empty else 0
    sections = [f"# Results\n\nFrom {', '.join(str(p) for p in paths)}: {len(runs)} results.json, {n_done} completed; "
                f"{len(problems)} listed under *Not completed* (never averaged). Metric: the task's main metric x100, "
                f"mean ± std over seeds (sample std). Ratios (×) are to method `{baseline}` on the same model and task.\n"]
    note = mixed_groups_note(stats)
    if note:
        sections.append(note)
    tables: dict[str, pd.DataFrame] = {}
    figures: list[Path] = []
    models = _order(stats["model"]) if not stats.empty else []
    for model in models:
        t = main_table(stats, model, baseline)
        tables[f"main/{model}"] = t
        sections.append(f"## {model}: main table (SAFE layout)\n\n" + markdown(t))
        e = efficiency_table(stats, model, baseline)
        tables[f"efficiency/{model}"] = e
        sections.append(f"## {model}: cost per task and method\n\nMemory in bytes as measured (saved for backward: "
                        "activations autograd keeps; state + saved: that plus weights, gradients and optimizer state); "
                        "[ratio to the baseline].\n\n" + markdown(e))
        if plots:
            fig = plot_efficiency(stats, model, baseline, out / f"efficiency_{model}.png")
            figures += [fig] if fig else []
            for task in task_order(stats[stats["model"] == model]["task"]):
                fig = plot_freeze_timelines(raw, model, task, out / f"freeze_timeline_{model}_{task}.png")
                figures += [fig] if fig else []
    if not pstats.empty:
        for model in _order(pstats["model"]):
            for value, title in (("metric", "Table 1 layout: task metric after pruning (x100; 0% = unpruned)"),
                                 ("stability", "Table 2 layout: stability after pruning")):
                t = pruning_table(pstats, model, value)
                tables[f"pruning_{value}/{model}"] = t
                sections.append(f"## {model}: {title}\n\n" + markdown(t))
            if plots:
                for task in task_order(pstats[pstats["model"] == model]["task"]):
                    fig = plot_pruning(pstats, model, task, out / f"pruning_{model}_{task}.png")
                    figures += [fig] if fig else []
    sections.append("## Not completed\n\n" + markdown(problems))
    if figures:
        sections.append("## Figures\n\n" + "".join(f"![{f.stem}]({f.name})\n" for f in figures))
    text = "\n".join(sections)
    (out / "report.md").write_text(text)
    return {"runs": runs, "stats": stats, "pruning": pstats, "problems": problems, "tables": tables,
            "figures": figures, "markdown": text, "out": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/aggregate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, default=[Path("outputs")], help="sweep dirs, run dirs or outputs/ (default)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default <first path>/report)")
    p.add_argument("--baseline", default="adapter", help="method the ratios are taken to (default adapter)")
    p.add_argument("--by", action="append", default=[], metavar="KEY",
                   help="also group by this config key (e.g. trainer.lr), or by `sweep` (the folder holding each run); repeatable")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = p.parse_args(argv)
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent) / "report"
    report = build_report(args.paths, out, args.baseline, args.by, plots=not args.no_plots)
    if not args.quiet:
        print(report["markdown"])
    print(f"aggregate: {len(report['runs'])} runs, {len(report['problems'])} not completed; wrote {out}/report.md, "
          f"runs.csv, summary.csv, problems.csv" + (", pruning.csv" if not report["pruning"].empty else "")
          + (f" and {len(report['figures'])} PNGs" if report["figures"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
