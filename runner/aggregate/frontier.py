"""SAFE's accuracy-savings frontier: one point per setting (mean over seeds) against the baseline, and
the rule that picks a default from it.

Each point is a group of :func:`runner.aggregate.stats.summarize_runs` (a method and its ``--by``
settings, e.g. ``safe.threshold``, ``safe.t_w``, ``safe.t_f``) on one model and task, placed at its
whole-run train FLOPs ratio to the baseline (x) and its main metric x100 (y, error bar: std over
seeds), its marker area growing with its mean saved-for-backward memory ratio. The rule
(docs/safe.md): **the largest saving whose mean metric is within** :data:`TOLERANCE` **points of the
baseline's**, i.e. among the points with ``metric >= baseline - TOLERANCE`` the lowest FLOPs ratio
(ties: lower memory ratio, then higher metric). Only the tuned method's own settings are candidates:
SAFE's baselines (``safe:random``, ``safe:static``) are drawn and tabled but never picked. When no
setting holds the metric the rule picks nothing, and the setting with the highest mean metric among
those run on the most seeds is marked *closest* instead (accuracy comes first: it is what a default must then be, labelled as not
holding). Only a setting run on at least as many seeds as the baseline can be picked: a mean over
fewer seeds set against the baseline's is one seed's luck, not a default; such a setting is drawn and
tabled, and marked *holds on fewer seeds* where its mean is inside the band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.aggregate.plots import _plt, _save
from runner.aggregate.stats import task_order
from runner.aggregate.tables import _method_label

TOLERANCE = 0.5  # points of the main metric x100 below the baseline that still count as "the same accuracy"
FLOPS, MEMORY = "flops.train_total", "memory.saved_for_backward_mean_bytes"
SHORT_KEYS = {"safe.threshold": "T"}  # plot labels: T_final as the docs write it


def _baseline(s: pd.DataFrame, baseline: str) -> pd.Series | None:
    base = s[s["method"] == baseline]
    cfg = [c for c in s.columns if c.startswith("cfg.")]
    if len(base) > 1 and cfg:  # a grid's baseline has no SAFE settings ("-")
        base = base[(base[cfg] == "-").all(axis=1)]
    return base.iloc[0] if len(base) == 1 else None


def _ratio(row: pd.Series, base: pd.Series, col: str) -> float:
    a, b = row.get(f"{col}_mean", np.nan), base.get(f"{col}_mean", np.nan)
    return float(a / b) if not pd.isna(a) and not pd.isna(b) and b else float("nan")


def frontier_points(stats: pd.DataFrame, model: str, task: str, baseline: str = "adapter") -> pd.DataFrame:
    """The points of one model and task (baseline excluded) with their ratios, whether each holds the
    baseline's metric within TOLERANCE, whether it is on the Pareto front, and which one the rule picks.
    Empty when the baseline is missing or nothing else ran."""
    s = stats[(stats["model"] == model) & (stats["task"] == task)]
    base = _baseline(s, baseline)
    if base is None:
        return pd.DataFrame()
    others = s[s["method"] != baseline]
    varying = [c for c in s.columns if c.startswith("cfg.") and others[c].nunique() > 1]  # what the plot labels show
    rows = []
    for _, r in s.iterrows():
        if r["method"] == baseline and r.equals(base):
            continue
        rows.append({"setting": _method_label(r, s), "label": _short_label(r, varying), "method": r["method"], "n": int(r["n_seeds"]),
                     "metric": 100 * r["metric_mean"], "metric_std": 100 * np.nan_to_num(r.get("metric_std", np.nan)),
                     "flops_ratio": _ratio(r, base, FLOPS), "memory_ratio": _ratio(r, base, MEMORY)})
    points = pd.DataFrame(rows)
    if points.empty:
        return points
    points.attrs["baseline_metric"] = 100 * base["metric_mean"]
    points.attrs["baseline_std"] = 100 * np.nan_to_num(base.get("metric_std", np.nan))
    points.attrs["baseline_n"] = int(base["n_seeds"])  # distinct seeds, as the points'
    points["holds_metric"] = points["metric"] >= points.attrs["baseline_metric"] - TOLERANCE
    points["enough_seeds"] = points["n"] >= points.attrs["baseline_n"]  # the rule compares means over as many seeds
    points["pareto"] = [_on_front(points, i) for i in range(len(points))]
    points["chosen"] = points["closest"] = False
    pick = choose(points)
    if pick is not None:
        points.loc[pick, "chosen"] = True
    else:
        near = closest(points)
        if near is not None:
            points.loc[near, "closest"] = True
    return points


def _is_variant(method) -> bool:
    """A baseline run through a method's code path (``safe:random``, named so by runner.aggregate.collect)."""
    return ":" in str(method)


def _short_label(row: pd.Series, varying: list[str]) -> str:
    """The plot's label: the ``varying`` settings (``cfg.*`` columns that differ among the non-baseline
    rows), by their last key part (``T=0.5 t_w=0.3 own``; a flag by its name when true, left out when
    false), after the method when it is a baseline of its own (``safe:random``)."""
    parts = [row["method"]] if _is_variant(row["method"]) else []
    for c in varying:
        value, key = str(row[c]), SHORT_KEYS.get(c[4:], c.rsplit(".", 1)[-1])
        if value in ("-", "False"):
            continue
        parts.append(key if value == "True" else value if c[4:] == "safe.importance" else f"{key}={value}")
    return " ".join(parts) or str(row["method"])


def _on_front(points: pd.DataFrame, i: int) -> bool:
    """No other point has a FLOPs ratio at most this one's and a metric at least this one's, one of them strictly."""
    x, y = points["flops_ratio"], points["metric"]
    if pd.isna(x.iloc[i]):
        return False
    better = (x <= x.iloc[i]) & (y >= y.iloc[i]) & ((x < x.iloc[i]) | (y > y.iloc[i]))
    return not bool(better.any())


def _candidates(points: pd.DataFrame) -> pd.DataFrame:
    """The tuned method's own settings (a baseline of it, ``method:policy``, is never a default)."""
    return points[~points["method"].map(_is_variant) & points["flops_ratio"].notna()]


def choose(points: pd.DataFrame):
    """The rule: among the candidates that hold the metric on at least the baseline's number of seeds,
    the lowest FLOPs ratio (then memory, then metric)."""
    ok = _candidates(points)
    ok = ok[ok["holds_metric"] & ok["enough_seeds"]]
    if ok.empty:
        return None
    order = ok.assign(_m=ok["memory_ratio"].fillna(np.inf), _y=-ok["metric"]).sort_values(["flops_ratio", "_m", "_y"])
    return order.index[0]


def closest(points: pd.DataFrame):
    """When nothing holds the metric: among the candidates run on the most seeds (a one-seed point's luck
    is not a default), the highest mean metric (ties: lower FLOPs ratio); None without candidates."""
    c = _candidates(points)
    if c.empty:
        return None
    c = c[c["n"] == c["n"].max()]
    return c.assign(_y=-c["metric"]).sort_values(["_y", "flops_ratio"]).index[0]


def frontier_by_task(stats: pd.DataFrame, model: str, baseline: str = "adapter") -> dict[str, pd.DataFrame]:
    """:func:`frontier_points` of every task of ``model`` that has any, in task order."""
    points = {task: frontier_points(stats, model, task, baseline) for task in task_order(stats[stats["model"] == model]["task"])}
    return {task: p for task, p in points.items() if not p.empty}


def frontier_table(points_by_task: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every task's points (:func:`frontier_by_task`) as one table (metric x100 mean ± std, ratios, n,
    front and choice marks)."""
    parts = []
    for task, p in points_by_task.items():
        parts.append(pd.DataFrame({
            "task": task.upper(), "setting": p["setting"], "n": p["n"],
            "metric": [f"{m:.2f} ± {s:.2f}" for m, s in zip(p["metric"], p["metric_std"])],
            "vs baseline": [f"{m - p.attrs['baseline_metric']:+.2f}" for m in p["metric"]],
            "FLOPs ratio": p["flops_ratio"].round(3), "memory ratio": p["memory_ratio"].round(3),
            "holds metric": np.where(p["holds_metric"], "yes", "no"),
            "front": np.where(p["pareto"], "*", ""),
            "chosen": np.where(p["chosen"], "<- rule", np.where(p["closest"], "closest (holds nothing)", np.where(
                p["holds_metric"] & ~p["enough_seeds"], f"holds on fewer seeds (n < {p.attrs['baseline_n']})", ""))),
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def frontier_figure(points: pd.DataFrame, model: str, task: str, baseline: str = "adapter"):
    """Metric against train FLOPs ratio, marker area ~ memory ratio, error bars over seeds; the baseline at
    (1, its metric) with the tolerance band; the Pareto front joined; the rule's pick ringed (dashed: the
    closest setting when the band is empty)."""
    if points.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    b = points.attrs["baseline_metric"]
    ax.axhspan(b - TOLERANCE, b + TOLERANCE, color="grey", alpha=0.15, label=f"{baseline} ± {TOLERANCE} (rule's band)")
    ax.errorbar([1.0], [b], yerr=[points.attrs["baseline_std"]], fmt="s", color="black", capsize=3,
                label=f"{baseline} (n={points.attrs['baseline_n']})")
    for i, (method, g) in enumerate(points.groupby("method", sort=False)):
        size = 200 * g["memory_ratio"].fillna(1.0).clip(lower=0.05)
        ax.errorbar(g["flops_ratio"], g["metric"], yerr=g["metric_std"], fmt="none", ecolor=f"C{i}", alpha=0.6, capsize=2)
        ax.scatter(g["flops_ratio"], g["metric"], s=size, color=f"C{i}", alpha=0.7, label=method)
    front = points[points["pareto"]].sort_values("flops_ratio")
    ax.plot(front["flops_ratio"], front["metric"], color="black", lw=1, ls=":", label="Pareto front")
    for _, r in points.iterrows():
        ax.annotate(r["label"], (r["flops_ratio"], r["metric"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for col, style, text in (("chosen", "-", "rule's pick"), ("closest", "--", "closest (band empty)")):
        pick = points[points[col]]
        if not pick.empty:
            ax.scatter(pick["flops_ratio"], pick["metric"], s=400, facecolors="none", edgecolors="red", lw=1.5,
                       linestyles=style, label=text)
    ax.set_xlabel(f"train FLOPs / {baseline}'s")
    ax.set_ylabel("main metric x100 (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{model} {task.upper()}: accuracy against savings (marker area ~ mean saved-for-backward ratio)", fontsize=9)
    return fig


def plot_frontier(points: pd.DataFrame, model: str, task: str, path: Path, baseline: str = "adapter") -> Path | None:
    """:func:`frontier_figure` of one task's :func:`frontier_points` as a PNG, when it has at least two
    points besides the baseline."""
    if len(points) < 2:
        return None
    return _save(frontier_figure(points, model, task, baseline), path)
