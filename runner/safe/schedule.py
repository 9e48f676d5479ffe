"""SAFE's freezing schedule: warm-up, a cubic threshold, then no more freezing.

All times are fractions of the total optimizer steps. With progress
``p = step / total_steps``::

    T(p) = 0                                               p <= t_w  (warm-up)
    T(p) = T_final * (1 - (1 - (p - t_w) / (t_f - t_w))^3)  t_w < p < t_f
    T(p) = T_final                                         p >= t_f

The cubic rises fast at first and flattens towards ``t_f`` (the same shape as
AdaLoRA's budget schedule), so most freezing happens early in the freezing
phase, where it saves the most.
"""

from __future__ import annotations



def validate(t_w: float, t_f: float, final: float) -> None:
    if not 0.0 <= t_w < t_f <= 1.0:
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
