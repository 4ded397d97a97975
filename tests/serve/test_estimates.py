"""Online corrections: they learn the observed ratio, resist one stall, and decay back to the profile when their
evidence ages; decode times scale by pixels and are corrected per (format, member); the upgrade budget refills at its
share of the lanes and learns that share from requests met and missed."""

import pytest

from effx_serve.serve.estimates import Correction, Corrections, DecodeTimes, Mean, UpgradeBudget


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
    # Routing asks for both at once, summed over a request's images: only the loaded figure carries what serving taught.
    shapes = [("JPEG", DecodeTimes.REFERENCE_PIXELS), ("PNG", DecodeTimes.REFERENCE_PIXELS // 2)]
    assert times.loaded_and_calibrated_ms(shapes, "m") == pytest.approx((3.0 + 3.0, 2.0 + 3.0))


def test_a_mean_starts_from_its_guess_and_ignores_nonsense():
    mean = Mean(start=0.3, weight=0.5, clock=Clock())
    assert mean.value == 0.3
    mean.observe(1.0)
    assert mean.value == 1.0
    mean.observe(3.0)
    mean.observe(-1.0)
    assert mean.value == 2.0


def test_a_mean_decays_back_to_its_start_as_its_evidence_ages():
    clock = Clock()
    mean = Mean(start=0.0, weight=0.1, half_life_s=10.0, clock=clock)
    mean.observe(40.0)  # a stall's hand-back
    assert mean.value == 40.0
    clock.now += 10.0
    assert mean.value == pytest.approx(20.0)  # half of it after a half-life without evidence
    clock.now += 60.0
    assert mean.value < 0.7
    mean.observe(1.0)  # new evidence is weighed against the decayed value, not the stall's
    decayed = 40.0 * 0.5**7
    assert mean.value == pytest.approx(decayed + 0.1 * (1.0 - decayed))
    with pytest.raises(ValueError):
        Mean(start=0.0, half_life_s=0.0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Correction(weight=0.0)
    with pytest.raises(ValueError):
        Correction(half_life_s=0.0)


def test_the_upgrade_budget_refills_at_its_share_of_the_lanes_and_goes_into_debt():
    clock = Clock()
    budget = UpgradeBudget(lanes=2, share=0.5, burst_ms=10.0, clock=clock)
    assert budget.available_ms() == 20.0  # full: burst x lanes
    assert budget.affordable({"the bucket": 20.0, "above it": 20.1, "cheaper": -5.0}) == {"the bucket", "cheaper"}  # a cheaper member always fits
    budget.spend(30.0)
    assert budget.available_ms() == -10.0 and budget.affordable({"upgrade": 1.0, "cheaper": -5.0}) == {"cheaper"}  # in debt: no upgrade until it is paid
    clock.now += 0.015  # 15 ms x 0.5 x 2 lanes = 15 lane-ms back
    assert budget.available_ms() == pytest.approx(5.0)
    clock.now += 10.0
    assert budget.available_ms() == 20.0  # never above the burst
    budget.spend(1000.0)
    assert budget.available_ms() == -20.0  # nor in debt beyond it: a burst is forgotten in bounded time


def test_the_upgrade_budget_share_rises_with_requests_met_and_backs_off_once_per_burst_of_misses():
    clock = Clock()
    budget = UpgradeBudget(lanes=1, share=0.5, floor=0.1, increase=0.01, decrease=0.5, backoff_s=0.05, clock=clock)
    for _ in range(10):
        budget.met()
    assert budget.share == pytest.approx(0.6)
    for _ in range(5):  # five misses at once: one step back
        budget.missed()
    assert budget.share == pytest.approx(0.3)
    for _ in range(4):
        clock.now += 0.06
        budget.missed()
    assert budget.share == 0.1  # never below the floor
    for _ in range(200):
        budget.met()
    assert budget.share == 1.0  # nor above every lane


@pytest.mark.parametrize("settings", [{"lanes": 0}, {"lanes": 1, "share": 0.0}, {"lanes": 1, "share": 1.5}, {"lanes": 1, "burst_ms": 0.0},
                                      {"lanes": 1, "share": 0.2, "floor": 0.3}])
def test_bad_upgrade_budgets_are_refused(settings):
    with pytest.raises(ValueError):
        UpgradeBudget(**settings)
