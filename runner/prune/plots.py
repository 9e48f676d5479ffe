"""Head score heat maps and the quality-vs-ratio curves (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TITLES = {
    "hies": "HIES (alpha={alpha})",
    "his": "HIS |dL/dm| (layer-normalised)",
    "entropy": "1 - attention entropy",
    "magnitude": "weight L2 norm",
    "random": "random (seeded)",
    "his_raw": "HIS, raw (per token)",
    "attention_entropy": "attention entropy AE",
}



def _save(fig, path: Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def heatmaps(maps: dict[str, np.ndarray], path: Path, pruned: dict[str, np.ndarray] | None = None,
             alpha: float | None = None, title: str = "") -> Path:
    """One panel per score map (layers x heads); an x marks heads pruned at the primary ratio."""
    names = [n for n in maps if n != "none"]
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        data = np.asarray(maps[name], dtype=float)
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(TITLES.get(name, name).format(alpha=alpha), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(data.shape[0]))
        ax.tick_params(labelsize=6)
        if pruned and name in pruned:
            ys, xs = np.nonzero(np.asarray(pruned[name]))
            ax.scatter(xs, ys, marker="x", s=18, c="red", linewidths=1)
    return _save(fig, path, title)


def quality_curves(records: list[dict], baseline: float, metric: str, path: Path, title: str = "",
                   trivial: float | None = None, trivial_label: str = "majority class") -> Path:
    """:func:`quality_figure` as a PNG."""
    return _save(quality_figure(records, baseline, metric, trivial, trivial_label), path, title)


def quality_figure(records: list[dict], baseline: float, metric: str, trivial: float | None = None,
                   trivial_label: str = "majority class"):
    """Task metric and stability against the fraction of heads pruned, one line per criterion; the
    trivial level (a constant prediction's metric), when given, as a dashed black line."""
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(10, 4))
    criteria = list(dict.fromkeys(r["criterion"] for r in records))
    for crit in criteria:
        rs = sorted((r for r in records if r["criterion"] == crit), key=lambda r: r["ratio"])
        x = [0.0] + [r["ratio"] for r in rs]
        style = dict(marker="o", linestyle="--" if crit in ("random", "none") else "-", label=crit)
        ax_m.plot(x, [baseline] + [_nan(r["main_metric"]) for r in rs], **style)
        ax_s.plot(x, [1.0] + [_nan(r["stability"]) for r in rs], **style)
    ax_m.axhline(baseline, color="grey", linewidth=0.8, linestyle=":")
    if trivial is not None:
        ax_m.axhline(trivial, color="black", linewidth=1, linestyle="--", label=f"{trivial_label} ({trivial:.3f})")
    ax_m.set_xlabel("fraction of heads pruned")
    ax_m.set_ylabel(metric)
    ax_m.set_title(f"{metric} (unpruned {baseline:.3f})", fontsize=10)
    ax_s.set_xlabel("fraction of heads pruned")
    ax_s.set_ylabel("stability (agreement with unpruned)")
    ax_s.set_title("stability", fontsize=10)
    for ax in (ax_m, ax_s):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def alpha_curve(table: list[dict], chosen: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([t["alpha"] for t in table], [t["auc"] for t in table], marker="o")
    ax.axvline(chosen, color="red", linestyle=":", label=f"chosen alpha={chosen}")
    ax.set_xlabel("alpha")
    ax.set_ylabel("area under quality-vs-ratio (held-out train)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _nan(v):
    return float("nan") if v is None else v
