"""The cubic threshold schedule matches its formula at the ends and the midpoint."""

import pytest

from runner.safe import schedule


@pytest.mark.parametrize("t_w,t_f,final", [(0.1, 0.4, 0.9), (0.0, 1.0, 1.0), (0.25, 0.5, 0.6)])
def test_threshold_at_ends_and_midpoint(t_w, t_f, final):
    assert schedule.threshold(t_w, t_w, t_f, final) == 0.0
    assert schedule.threshold(t_f, t_w, t_f, final) == pytest.approx(final)
    mid = (t_w + t_f) / 2
    assert schedule.threshold(mid, t_w, t_f, final) == pytest.approx(final * (1 - 0.5 ** 3))  # 0.875 T_final


def test_threshold_outside_the_freezing_phase_and_monotone():
    assert schedule.threshold(0.0, 0.1, 0.4, 0.9) == 0.0
    assert schedule.threshold(0.05, 0.1, 0.4, 0.9) == 0.0
    assert schedule.threshold(0.7, 0.1, 0.4, 0.9) == pytest.approx(0.9)
    assert schedule.threshold(1.0, 0.1, 0.4, 0.9) == pytest.approx(0.9)
    values = [schedule.threshold(p / 100, 0.1, 0.4, 0.9) for p in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # a quarter into the phase: 1 - 0.75^3 of the final threshold
    assert schedule.threshold(0.175, 0.1, 0.4, 0.9) == pytest.approx(0.9 * (1 - 0.75 ** 3))


def test_steps_and_validation():
    assert schedule.step_of(0.1, 345) == 34 and schedule.step_of(0.4, 345) == 138
    for bad in [(0.5, 0.4, 0.9), (-0.1, 0.4, 0.9), (0.1, 1.2, 0.9), (0.1, 0.4, 1.5)]:
        with pytest.raises(ValueError):
            schedule.validate(*bad)
