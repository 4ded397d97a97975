"""What the server learns online about its own speed: corrections to profiled times, and image decoding time.

The profile says how long a batch takes on a quiet machine; serving sees other threads, other load and,
where records are borrowed or predicted, other hardware. Every correction here is an exponentially
weighted mean of log(observed / predicted), bounded so one stall cannot poison it, and it **decays back to
1 when its evidence gets old** (a half-life in seconds): a member the router stopped choosing during a burst
does not keep the burst's factor for minutes after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable

Clock = Callable[[], float]


def _check(weight: float, half_life_s: float) -> None:
    if not 0 < weight <= 1 or half_life_s <= 0:
        raise ValueError("weight must be in (0, 1] and half_life_s above 0")


def _kept(since: float | None, now: float, half_life_s: float) -> float:
    """The share of what was learned at `since` that is left at `now` (0 with no evidence): it halves every half-life."""
    return 0.0 if since is None else 0.5 ** (max(0.0, now - since) / half_life_s)


class Correction:
    """A factor learned from (predicted, observed) pairs: exp of a decaying, weighted mean of their log ratio."""

    def __init__(self, weight: float = 0.1, half_life_s: float = 10.0, bounds: tuple[float, float] = (0.05, 50.0),
                 clock: Clock = time.monotonic):
        _check(weight, half_life_s)
        self._weight, self._half_life, self._clock = weight, half_life_s, clock
        self._low, self._high = math.log(bounds[0]), math.log(bounds[1])
        self._log_ratio, self._at = 0.0, None  # None: no evidence yet
        self._cached = (-math.inf, 1.0)  # (when, factor)

    def _current(self, now: float) -> float:
        return self._log_ratio * _kept(self._at, now, self._half_life)

    def observe(self, predicted: float, observed: float) -> None:
        if not (predicted > 0 and observed > 0 and math.isfinite(predicted) and math.isfinite(observed)):
            return
        now = self._clock()
        sample = min(self._high, max(self._low, math.log(observed / predicted)))
        previous = self._current(now)
        self._log_ratio = sample if self._at is None else previous + self._weight * (sample - previous)
        self._at = now
        self._cached = (-math.inf, 1.0)

    def factor(self) -> float:
        now = self._clock()
        if now - self._cached[0] > 0.001:  # the same within a millisecond: it is asked for many times per request
            self._cached = (now, math.exp(self._current(now)))
        return self._cached[1]


class Corrections:
    """One Correction per key (a member, or an (image format, member) pair), made on first use."""

    def __init__(self, **settings):
        self._settings = settings
        self._by_key: dict[Hashable, Correction] = {}

    def __getitem__(self, key: Hashable) -> Correction:
        correction = self._by_key.get(key)
        if correction is None:
            correction = self._by_key[key] = Correction(**self._settings)
        return correction

    def factor(self, key: Hashable) -> float:
        correction = self._by_key.get(key)
        return correction.factor() if correction is not None else 1.0


class Mean:
    """An exponentially weighted mean of a duration (ms), with a starting value until the first observation, that decays
    back to it as its evidence ages (a half-life in seconds). Without the decay a mean learned in a stall could lock a
    server out: a hand-back of tens of milliseconds makes every bound look unmeetable, every request is refused, and
    no answer comes to teach it otherwise (measured: a server refused every request for over a minute, docs/serving-measurements.md)."""

    def __init__(self, start: float, weight: float = 0.05, half_life_s: float = 10.0, clock: Clock = time.monotonic):
        _check(weight, half_life_s)
        self._start, self._weight, self._half_life, self._clock = start, weight, half_life_s, clock
        self._learned, self._at = start, None  # None: no evidence yet

    @property
    def value(self) -> float:
        return self._start + (self._learned - self._start) * _kept(self._at, self._clock(), self._half_life)

    def observe(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return
        current = self.value
        self._learned = value if self._at is None else current + self._weight * (value - current)
        self._at = self._clock()


class DecodeTimes:
    """Expected decode + preprocessing time of an image for a member: measured per (format, member) on a reference
    photo at start, scaled by the image's pixel count, corrected online per (format, member)."""

    REFERENCE_PIXELS = 640 * 480

    def __init__(self, fallback_ms: float = 3.0, **correction):
        self._reference: dict[tuple[str, str], float] = {}  # (format, member) -> ms for a REFERENCE_PIXELS image
        self._fallback = fallback_ms
        self.corrections = Corrections(**correction)

    def calibrate(self, image_format: str, member: str, reference_ms: float) -> None:
        self._reference[(image_format, member)] = reference_ms

    def _base(self, image_format: str, member: str, pixels: int) -> float:
        reference = self._reference.get((image_format, member))
        if reference is None:  # an unusual format: the slowest calibrated one for this member, else the fallback
            reference = max((ms for (_, name), ms in self._reference.items() if name == member), default=self._fallback)
        return reference * max(pixels, 1) / self.REFERENCE_PIXELS

    def expected_ms(self, image_format: str, member: str, pixels: int) -> float:
        return self._base(image_format, member, pixels) * self.corrections.factor((image_format, member))

    def loaded_and_calibrated_ms(self, shapes: Iterable[tuple[str, int]], member: str) -> tuple[float, float]:
        """(`expected_ms`, and as calibrated at start on a quiet server, without what the load has taught since) summed over
        images of (format, pixels): what routing asks for every member."""
        expected = calibrated = 0.0
        for image_format, pixels in shapes:
            base = self._base(image_format, member, pixels)
            expected += base * self.corrections.factor((image_format, member))
            calibrated += base
        return expected, calibrated

    def observe(self, image_format: str, member: str, pixels: int, observed_ms: float) -> None:
        self.corrections[(image_format, member)].observe(self._base(image_format, member, pixels), observed_ms)


class UpgradeBudget:
    """How much device work the router may spend on members more accurate (and costlier) than the cheapest that meets
    a request's SLA: a token bucket of lane-milliseconds, refilled at `share` x lanes per millisecond.

    Each request's own expectation says whether *it* can make its bound on a member; it cannot say what choosing a
    costlier member does to the requests that follow. Sending every request to the most accurate member that fits now
    overloads the device a moment later (measured: 88% of requests on a member that, pinned, met a third of the same
    bounds). So an upgrade's extra cost over the cheapest feasible member must fit in the bucket, and every routed
    request spends its member's cost.

    `share` is the share of the lanes the admitted work may take. The lanes are not all a request costs (reading, HTTP
    and answering take the event loop; other processes take cores), so it is learned: additive increase for each
    request answered within its bound, multiplicative decrease for each one admitted and then late or dropped late
    (at most once per `backoff_s`, so one burst is one step).
    """

    def __init__(self, lanes: int, share: float = 0.5, burst_ms: float = 20.0, floor: float = 0.05, increase: float = 0.002,
                 decrease: float = 0.8, backoff_s: float = 0.05, clock: Clock = time.monotonic):
        if lanes < 1 or not 0 < floor <= share <= 1 or burst_ms <= 0:
            raise ValueError("lanes must be >= 1, 0 < floor <= share <= 1 and burst_ms > 0")
        self.lanes, self.share, self.floor = lanes, share, floor
        self._increase, self._decrease, self._backoff_s, self._clock = increase, decrease, backoff_s, clock
        self._cap = burst_ms * lanes
        self._tokens, self._at, self._backed_off = self._cap, clock(), -math.inf

    def available_ms(self) -> float:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._at) * 1000.0 * self.share * self.lanes)
        self._at = now
        return self._tokens

    def affordable(self, extra_ms: dict) -> set:
        """The keys of `extra_ms` that fit now: each an upgrade costing that many lane-milliseconds more than the cheapest
        feasible member; the bucket is read once for them all."""
        available = max(0.0, self.available_ms())  # a cheaper member (extra <= 0) always fits
        return {key for key, extra in extra_ms.items() if extra <= available}

    def spend(self, cost_ms: float) -> None:
        """A request routed: its member's expected lane-milliseconds (the bucket may go into debt, delaying upgrades)."""
        self.available_ms()
        self._tokens = max(-self._cap, self._tokens - max(0.0, cost_ms))

    def met(self) -> None:
        self.share = min(1.0, self.share + self._increase)

    def missed(self) -> None:
        now = self._clock()
        if now - self._backed_off >= self._backoff_s:
            self.share = max(self.floor, self.share * self._decrease)
            self._backed_off = now
