"""The report's PNG figures: efficiency, SAFE's freezing timelines, pruning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner.aggregate.collect import EFFICIENCY, freeze_steps
from runner.aggregate.stats import _order, task_order
from runner.aggregate.tables import _kind, _method_label, _unit

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
