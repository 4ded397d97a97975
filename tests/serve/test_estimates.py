"""Online corrections: they learn the observed ratio, resist one stall, and decay back to the profile when their
evidence ages; decode times scale by pixels and are corrected per (format, member)."""

import pytest

from effx_serve.serve.estimates import Correction, Corrections, DecodeTimes, Mean


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_correction_learns_the_ratio_and_resists_one_stall():
    correction = Correction(weight=0.2, clock=Clock())
    assert correction.factor() == 1.0
    for _ in range(60):
        correction.observe(predicted=1.0, observed=2.0)
    assert correction.factor() == pytest.approx(2.0, rel=1e-3)
    correction.observe(predicted=1.0, observed=1e6)  # one stall: clamped, then smoothed
    assert correction.factor() < 2.0 * 50**0.2 + 1e-9
    correction.observe(predicted=0.0, observed=1.0)  # nonsense is ignored
    correction.observe(predicted=1.0, observed=float("nan"))


def test_a_correction_decays_back_to_the_profile_when_its_evidence_ages():
    clock = Clock()
    correction = Correction(weight=1.0, half_life_s=10.0, clock=clock)
    correction.observe(1.0, 8.0)
    assert correction.factor() == pytest.approx(8.0)
    clock.now += 10.0
    assert correction.factor() == pytest.approx(8.0**0.5)  # one half-life: half the log ratio
    clock.now += 60.0
    assert correction.factor() == pytest.approx(1.0, abs=0.05)  # a minute later it no longer says 8x
    correction.observe(1.0, 2.0)  # new evidence starts from what is left of the old
    assert correction.factor() == pytest.approx(2.0, rel=0.05)


def test_corrections_are_per_key_and_start_at_one():
    corrections = Corrections(weight=1.0, clock=Clock())
    corrections["a"].observe(1.0, 3.0)
    assert corrections.factor("a") == pytest.approx(3.0) and corrections.factor("b") == 1.0


def test_decode_times_scale_with_pixels_fall_back_for_unknown_formats_and_learn():
    times = DecodeTimes(fallback_ms=5.0, clock=Clock(), weight=1.0)
    assert times.expected_ms("JPEG", "m", DecodeTimes.REFERENCE_PIXELS) == 5.0  # nothing calibrated yet
    times.calibrate("JPEG", "m", 2.0)
    times.calibrate("PNG", "m", 6.0)
    assert times.expected_ms("JPEG", "m", 4 * DecodeTimes.REFERENCE_PIXELS) == pytest.approx(8.0)
    assert times.expected_ms("TIFF", "m", DecodeTimes.REFERENCE_PIXELS) == pytest.approx(6.0)  # the slowest known one
    times.observe("JPEG", "m", DecodeTimes.REFERENCE_PIXELS, 3.0)
    assert times.expected_ms("JPEG", "m", DecodeTimes.REFERENCE_PIXELS) == pytest.approx(3.0)
    assert times.expected_ms("PNG", "m", DecodeTimes.REFERENCE_PIXELS) == pytest.approx(6.0)


def test_a_mean_starts_from_its_guess_and_ignores_nonsense():
    mean = Mean(start=0.3, weight=0.5)
    assert mean.value == 0.3
    mean.observe(1.0)
    assert mean.value == 1.0
    mean.observe(3.0)
    mean.observe(-1.0)
    assert mean.value == 2.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Correction(weight=0.0)
    with pytest.raises(ValueError):
        Correction(half_life_s=0.0)
