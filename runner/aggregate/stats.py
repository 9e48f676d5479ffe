"""Mean, std and n over seeds per group; ratios to the baseline method; pruning per (criterion, ratio)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from runner.aggregate.collect import (
    EFFICIENCY,
    GLUE_ORDER,
    GROUP_KEYS,
    PAPER_METRICS,
    differing_settings,
    pruning_entries,
    trivial_level,
)
from runner.curves import MARGIN

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
    stats["n_seeds"] = grouped["seed"].nunique()  # a run repeated on one seed is not another seed
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
        equal = (stats[k] == row[k]).to_numpy()
        if k.startswith("cfg."):  # a setting the baseline does not have (a SAFE knob): "-" matches any value
            equal = equal | (stats[k] == "-").to_numpy()
        mask &= equal
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


def is_missing(v) -> bool:
    """None or NaN (a list or array is a value)."""
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def collapsed(metric, trivial) -> bool | None:
    """Whether a metric is not above the trivial level (by :data:`runner.curves.MARGIN`, the learning
    check's rule): the model predicts (almost) one class. None when either is unknown."""
    if is_missing(metric) or is_missing(trivial):
        return None
    return bool(metric <= trivial + MARGIN)


def summarize_pruning(raw: list[dict]) -> pd.DataFrame:
    """Mean/std/min/max/n over seeds of metric, stability, FLOPs and parameter ratios and the paper's metrics
    beside the main one (``f1_*``: MRPC's F1; NaN for tasks without it) per (model, task, method, criterion, ratio).

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
                             "flops_ratio": 1.0, "params_ratio": 1.0, **{m: reference.get(m) for m in PAPER_METRICS}})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = ["model", "task", "method", "adapter", "criterion", "ratio"]
    values = ["metric", "stability", "flops_ratio", "params_ratio", *PAPER_METRICS]
    for col in (*values, "trivial"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else float("nan")
    df["collapsed"] = [collapsed(m, t) is True for m, t in zip(df["metric"], df["trivial"])]
    grouped = df.groupby(keys, sort=False, dropna=False)
    stats = grouped[values].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["n"] = grouped.size()
    stats["trivial"] = grouped["trivial"].mean()
    stats["trivial_what"] = grouped["trivial_what"].first()
    stats["collapsed_n"] = grouped["collapsed"].sum().astype(int)
    return stats.reset_index().sort_values(["model", "task", "criterion", "ratio"], kind="stable").reset_index(drop=True)
