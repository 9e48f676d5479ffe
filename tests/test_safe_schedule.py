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


def test_fraction_units_convert_as_before():
    w = schedule.window(0.1, 0.4, "fraction", total_steps=345, steps_per_epoch=115)
    assert w["steps"] == {"t_w": schedule.step_of(0.1, 345), "t_f": schedule.step_of(0.4, 345)} == {"t_w": 34, "t_f": 138}
    assert w["fractions"] == {"t_w": 0.1, "t_f": 0.4}  # what the threshold runs on: the given values, unrounded
    assert w["epochs"] == pytest.approx({"t_w": 0.3, "t_f": 1.2}) and w["total_epochs"] == 3
    assert w["unit"] == "fraction" and w["given"] == {"t_w": 0.1, "t_f": 0.4} and w["steps_per_epoch"] == 115


def test_epoch_units_convert_with_the_optimizer_steps_per_epoch():
    # 2 epochs of 23 optimizer steps (e.g. 46 batches with grad_accum_steps=2)
    w = schedule.window(0.5, 1.5, "epoch", total_steps=46, steps_per_epoch=23)
    assert w["steps"] == {"t_w": round(0.5 * 23), "t_f": round(1.5 * 23)} == {"t_w": 12, "t_f": 34}
    assert w["epochs"] == pytest.approx({"t_w": 0.5, "t_f": 1.5})
    assert w["fractions"] == pytest.approx({"t_w": 0.25, "t_f": 0.75})
    # t_f at the very end; trainer.max_steps cutting an epoch short: the run's epochs are fractional
    assert schedule.window(0, 2, "epoch", 46, 23)["steps"] == {"t_w": 0, "t_f": 46}
    assert schedule.window(0.2, 1.5, "epoch", 15, 10)["steps"] == {"t_w": 2, "t_f": 15}


@pytest.mark.parametrize("t_w,t_f,message", [
    (0.5, 3.0, "safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f <= 2 (the run's epochs: 46 optimizer steps, "
               "23 per epoch), got t_w=0.5, t_f=3 epochs"),
    (1.0, 0.5, "safe.schedule_unit=epoch needs 0 <= safe.t_w < safe.t_f <= 2 (the run's epochs: 46 optimizer steps, "
               "23 per epoch), got t_w=1, t_f=0.5 epochs"),
    (0.01, 0.02, "safe.t_w=0.01 and safe.t_f=0.02 epochs both fall on optimizer step 0 (the run's 2 epochs: "
                 "46 optimizer steps, 23 per epoch): widen the window"),
])
def test_epoch_windows_that_do_not_fit_the_run_fail_in_one_line(t_w, t_f, message):
    with pytest.raises(ValueError) as exc:
        schedule.window(t_w, t_f, "epoch", total_steps=46, steps_per_epoch=23)
    assert str(exc.value) == message and "\n" not in message


def test_validation_before_training_in_each_unit():
    schedule.validate(0.5, 3.0, 1.0, "epoch", epochs=None)  # the run's epochs not known yet: the order only
    schedule.validate(0.5, 3.0, 1.0, "epoch", epochs=3)
    with pytest.raises(ValueError, match=r"<= 2 \(the run's epochs\), got t_w=0.5, t_f=3 epochs$"):
        schedule.validate(0.5, 3.0, 1.0, "epoch", epochs=2)
    with pytest.raises(ValueError, match=r"need 0 <= safe.t_w < safe.t_f <= 1, got t_w=0.5, t_f=3"):
        schedule.validate(0.5, 3.0, 1.0)  # fractions: unchanged
