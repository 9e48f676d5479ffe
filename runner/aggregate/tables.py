"""The markdown tables: the SAFE paper's main table, efficiency, the HIES paper's Tables 1 and 2."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from runner.aggregate.collect import EFFICIENCY, MISSING
from runner.aggregate.stats import _order, is_missing, task_order

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
    if is_missing(value) or not math.isfinite(value):
        return MISSING
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [MISSING if is_missing(v) else str(v) for v in r.tolist()]
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

    ``value`` is ``metric`` (x100; the 0% column is the unpruned model), ``stability``, or one of
    ``runner.aggregate.collect.PAPER_METRICS`` (``f1``: x100, only the tasks that have it, e.g. MRPC).
    The metric table marks cells whose runs collapsed to the trivial level and ends with a row of that level.
    """
    p = pstats[pstats["model"] == model]
    if value == "stability":
        p = p[p["ratio"] > 0]
    elif value != "metric":
        p = p[p[f"{value}_mean"].notna()] if f"{value}_mean" in p else p.iloc[0:0]
    if p.empty:
        return pd.DataFrame()
    multi_method = p["method"].nunique() > 1
    scale = 1 if value == "stability" else 100
    digits = 3 if value == "stability" else 2
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
