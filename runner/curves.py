"""Did the model learn? The trivial level of every metric and the learning-curve plot.

The trivial level is what a model that ignores its input scores on the eval
split: the training set's majority class for classification (accuracy = that
class's share of the eval labels; F1 and Matthews as scikit-learn computes
them for a constant prediction), and 0 for the correlations of regression
(a constant prediction has no correlation; Pearson is undefined and counts
as 0). A run whose final main metric is not above it learned nothing a
comparison could use: the run says so in its log and ``results.json``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from runner.tasks import compute_metrics

log = logging.getLogger(__name__)

# How far above the trivial level the main metric must be (in metric units,
# e.g. 0.01 = one accuracy point) to count as learned.
MARGIN = 0.01
LOWER_IS_BETTER = ("perplexity", "loss")  # a causal-LM task's main metric must be below its trivial level


def trivial_levels(metrics: list[str], train_labels, eval_labels, is_regression: bool) -> dict:
    """Each metric of a constant prediction: the training majority class, or the training mean."""
    with warnings.catch_warnings():  # a constant prediction has no correlation: that is the point
        warnings.simplefilter("ignore")
        return _trivial_levels(metrics, train_labels, np.asarray(eval_labels), is_regression)


def _trivial_levels(metrics, train_labels, eval_labels, is_regression):
    if is_regression:
        prediction, eval_labels = float(np.mean(np.asarray(train_labels, dtype=np.float64))), eval_labels.astype(np.float64)
    else:
        prediction, eval_labels = Counter(int(y) for y in train_labels).most_common(1)[0][0], eval_labels.astype(np.int64)
    values = compute_metrics(metrics, np.full(len(eval_labels), prediction), eval_labels)
    return {"prediction": prediction, "metrics": {k: 0.0 if not math.isfinite(v) else v for k, v in values.items()}}


def learning_check(main_metric: str, final_metrics: dict, trivial: dict) -> dict:
    """``above_trivial`` and, when it is not, a warning that says what to look at."""
    level = trivial["metrics"].get(main_metric)
    value = final_metrics.get(main_metric)
    out = {"main_metric": main_metric, "final": value, "trivial": level, "margin": MARGIN,
           "trivial_prediction": trivial["prediction"], "trivial_metrics": trivial["metrics"]}
    if value is None or level is None:
        out["above_trivial"] = None
        return out
    lower = main_metric in LOWER_IS_BETTER
    above = math.isfinite(value) and (value < level - MARGIN if lower else value > level + MARGIN)
    out["above_trivial"] = bool(above)  # "better than trivial" (below it, for perplexity)
    if not above:
        out["warning"] = (
            f"the final {main_metric} {value:.4f} is not {'below' if lower else 'above'} the constant-prediction level {level:.4f} "
            f"(predicting {trivial['prediction']!r} for every example): the model did not learn; look at "
            f"learning_curve.png and try another trainer.lr, more epochs{'' if lower else ' or model.pooling'}"
        )
    return out


def plot_learning_curve(path: Path, history: list[dict], evals: list[dict], metrics: list[str],
                        trivial: dict | None, title: str = "") -> Path:
    """Training loss (raw and smoothed) and every eval metric against the optimizer step,
    with each metric's constant-prediction level as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [r["step"] for r in history]
    losses = [r["loss"] for r in history]
    if steps:
        ax_loss.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train loss (per step)")
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax_loss.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.6, label=f"train loss (mean of {window})")
    eval_steps = [e["step"] for e in evals]
    if evals and "loss" in evals[0]:
        ax_loss.plot(eval_steps, [e.get("loss") for e in evals], "o-", color="tab:red", label="eval loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(metrics):
        colour = colours[i % len(colours)]
        values = [e.get(name) for e in evals]
        if any(v is not None for v in values):
            ax_eval.plot(eval_steps, values, "o-", color=colour, label=name)
        if trivial is not None and name in trivial["metrics"]:
            ax_eval.axhline(trivial["metrics"][name], color=colour, ls="--", lw=1,
                            label=f"{name}, constant prediction ({trivial['metrics'][name]:.3f})")
    ax_eval.set_xlabel("optimizer step")
    ax_eval.set_ylabel("eval metric")
    ax_eval.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
