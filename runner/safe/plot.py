"""The freeze timeline: adapters x steps, coloured by normalised importance, grey once frozen."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def freeze_timeline(path: Path, layers: list[int], total_steps: int, measurements: list[dict],
                    freeze_steps: dict[int, int | None], frac_frozen: list[tuple[int, float]],
                    threshold: list[tuple[int, float]], title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    total_steps = max(1, int(total_steps))
    importance = np.full((len(layers), total_steps + 1), np.nan)
    row = {layer: i for i, layer in enumerate(layers)}
    for m in sorted(measurements, key=lambda m: m["step"]):
        for layer, value in m["normalised"].items():
            if int(layer) in row and value is not None:
                importance[row[int(layer)], int(m["step"]):] = value
    frozen = np.zeros_like(importance, dtype=bool)
    for layer, step in freeze_steps.items():
        if step is not None and int(layer) in row:
            frozen[row[int(layer)], int(step) + 1:] = True  # it froze after optimizer step `step`
    importance[frozen] = np.nan

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 2.2 + 0.35 * len(layers)), sharex=True,
                                  gridspec_kw={"height_ratios": [max(2, len(layers) * 0.5), 1.5]})
    extent = (-0.5, total_steps + 0.5, len(layers) - 0.5, -0.5)
    im = ax.imshow(importance, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1, extent=extent)
    ax.imshow(np.where(frozen, 1.0, np.nan), aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["#555555"]), vmin=0, vmax=1, extent=extent)
    for layer, step in freeze_steps.items():
        if step is not None and int(layer) in row:
            ax.plot([step + 0.5], [row[int(layer)]], marker="|", color="red", markersize=14, mew=2)
    ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    ax.set_ylabel("adapter")
    ax.set_title(title or "SAFE freeze timeline (colour: importance / max; grey: frozen; red: freeze step)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="importance / max")
    if frac_frozen:
        s, f = zip(*frac_frozen)
        ax2.step(s, f, where="post", label="fraction frozen", color="black")
    if threshold:
        s, t = zip(*threshold)
        ax2.plot(s, t, label="threshold T(t)", color="tab:orange", marker=".")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("optimizer step")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
