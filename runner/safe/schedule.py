"""SAFE's freezing schedule: warm-up, a cubic threshold, then no more freezing.

``safe.t_w`` and ``safe.t_f`` are fractions of the total optimizer steps
(``safe.schedule_unit=fraction``) or epochs (``epoch``: converted with the
run's optimizer steps per epoch, gradient accumulation counted, by
:func:`window`). Either way the schedule runs on fractions; with progress
``p = step / total_steps``::

    T(p) = 0                                               p <= t_w  (warm-up)
    T(p) = T_final * (1 - (1 - (p - t_w) / (t_f - t_w))^3)  t_w < p < t_f
    T(p) = T_final                                         p >= t_f

The cubic rises fast at first and flattens towards ``t_f`` (the same shape as
AdaLoRA's budget schedule), so most freezing happens early in the freezing
phase, where it saves the most.
"""

from __future__ import annotations

import math


def validate(t_w: float, t_f: float, final: float, unit: str = "fraction", epochs: float | None = None) -> None:
    """Before training: the window's order and range in its unit (``epochs``: the run's, None while unknown)."""
    if unit == "epoch":
        check_epochs(t_w, t_f, epochs)
    elif not 0.0 <= t_w < t_f <= 1.0:
        raise ValueError(f"need 0 <= safe.t_w < safe.t_f <= 1, got t_w={t_w}, t_f={t_f}")
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"safe.threshold (T_final) must lie in [0, 1] (importances are normalised by their max), got {final}")


def threshold(progress: float, t_w: float, t_f: float, final: float) -> float:
    """The importance threshold T at training progress ``progress`` in [0, 1]."""
    if progress <= t_w:
        return 0.0
    if progress >= t_f:
        return float(final)
    x = (progress - t_w) / (t_f - t_w)
    return float(final) * (1.0 - (1.0 - x) ** 3)


def step_of(fraction: float, total_steps: int) -> int:
    """The optimizer step at which a fraction of training is reached (rounded)."""
    return int(round(fraction * total_steps))


def check_epochs(t_w: float, t_f: float, epochs: float | None, run: str = "") -> None:
    """Epoch units: ``0 <= t_w < t_f <= epochs`` (the run's epochs; None: not known yet, the order only)."""
    if not 0.0 <= t_w < t_f <= (math.inf if epochs is None else epochs):
        bound = "" if epochs is None else f" <= {epochs:g} (the run's epochs{run})"
        raise ValueError(f"safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f{bound}, "
                         f"got t_w={t_w:g}, t_f={t_f:g} epochs")


def window(t_w: float, t_f: float, unit: str, total_steps: int, steps_per_epoch: int) -> dict:
    """The configured t_w and t_f in this run's optimizer steps, epochs and fractions of training.

    ``total_steps`` optimizer steps, ``steps_per_epoch`` of them per epoch (gradient accumulation
    counted). Fractions convert as always (``round(fraction * total_steps)``); epochs as
    ``round(epochs * steps_per_epoch)``, checked after the conversion (``0 <= t_w < t_f <= the run's
    epochs`` and distinct steps; one-line ValueError). ``fractions`` are what :func:`threshold` sees.
    """
    total, per_epoch = max(1, int(total_steps)), max(1, int(steps_per_epoch))
    epochs = total / per_epoch
    if unit == "epoch":
        run = f": {total} optimizer steps, {per_epoch} per epoch"
        check_epochs(t_w, t_f, epochs, run)
        steps = (int(round(t_w * per_epoch)), int(round(t_f * per_epoch)))
        if steps[0] >= steps[1]:
            raise ValueError(f"safe.t_w={t_w:g} and safe.t_f={t_f:g} epochs both fall on optimizer step {steps[0]} "
                             f"(the run's {epochs:g} epochs{run}): widen the window")
        fractions = (t_w * per_epoch / total, t_f * per_epoch / total)
    elif unit == "fraction":
        fractions = (t_w, t_f)
        steps = (step_of(t_w, total), step_of(t_f, total))
    else:
        raise ValueError(f"unknown safe.schedule_unit {unit!r}; valid: fraction, epoch")
    return {
        "unit": unit, "given": {"t_w": t_w, "t_f": t_f},
        "total_steps": total, "steps_per_epoch": per_epoch, "total_epochs": epochs,
        "steps": {"t_w": steps[0], "t_f": steps[1]},
        "epochs": {"t_w": fractions[0] * epochs, "t_f": fractions[1] * epochs},
        "fractions": {"t_w": fractions[0], "t_f": fractions[1]},
    }
