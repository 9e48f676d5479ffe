"""GLUE task metrics, computed with scikit-learn and scipy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearmanr": lambda p, y: spearmanr(p, y)[0],
}


def predictions_from_logits(logits: np.ndarray, is_regression: bool) -> np.ndarray:
    """Class ids (argmax) for classification, the scalar output for regression."""
    return logits[:, 0] if is_regression else logits.argmax(axis=-1)


def compute_metrics(names: Sequence[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics as plain floats (NaN if undefined, e.g. constant input)."""
    out = {}
    for name in names:
        with np.errstate(all="ignore"):
            try:
                value = float(METRICS[name](preds, labels))
            except ValueError:
                value = float("nan")
        out[name] = value
    return out
