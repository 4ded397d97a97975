"""How much a proxy measurement moves when only the seed changes, and whether a decision's margin is larger than that.

A proxy top-1 from a short training run is one draw: the same architecture trained again with another seed lands
elsewhere. `Spread` is the mean and standard deviation of several draws; `pooled_std` combines the spreads of several
architectures (each with its own mean) into one estimate of the seed noise; `Margin` says whether a difference
between two candidates is more than `NOISE_SIGMAS` standard deviations of it, and whether more seeds could make it so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

NOISE_SIGMAS = 2.0
"""A margin is signal when it exceeds this many standard deviations of the difference's seed noise."""
MAX_REPEATS = 6
"""Seeds a finalist is raced up to while its margin is inside the noise (LACS's and NAS's `--max-repeats`)."""


def seeds_at_most(noise_repeats: int, max_repeats: int) -> int:
    """The most seeds a finalist is trained with: the race's limit, or `noise_repeats` without a race (below 2 seeds the
    noise is not measured, so nothing is raced)."""
    return max(noise_repeats, max_repeats) if noise_repeats >= 2 else noise_repeats


@dataclass(frozen=True)
class Spread:
    """Repeated draws of one measurement (the same architecture, different seeds)."""

    samples: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None with fewer than two draws."""
        return statistics.stdev(self.samples) if len(self.samples) > 1 else None

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "samples": list(self.samples)}


def pooled_std(spreads: Sequence[Spread]) -> float | None:
    """The seed noise of one draw, pooled over architectures: sqrt(sum of squared deviations / degrees of freedom)."""
    squares = sum(sum((x - s.mean) ** 2 for x in s.samples) for s in spreads)
    freedom = sum(len(s.samples) - 1 for s in spreads)
    return math.sqrt(squares / freedom) if freedom > 0 else None


def difference_std(*stds: float) -> float:
    """The std of a difference (or sum) of independent measurements with these stds."""
    return math.hypot(*stds)


def means_difference_std(noise: float, *draws: int, scales: Sequence[float] | None = None) -> float:
    """The std of the difference of two means, each of `draws` independent draws with seed noise `noise` (each scaled by
    `scales`, e.g. a reward's latency factor): noise * sqrt(1/n_a + 1/n_b). A decision taken on means of several seeds is
    that much surer than one taken on single draws."""
    scales = scales or [1.0] * len(draws)
    return difference_std(*(scale * noise / math.sqrt(n) for scale, n in zip(scales, draws, strict=True)))


@dataclass(frozen=True)
class Margin:
    """The difference `value` between a winner and its runner-up, against `noise`, the std of that difference."""

    value: float
    noise: float | None

    @property
    def inside_noise(self) -> bool | None:
        """True when the margin is within NOISE_SIGMAS of the noise (the ranking may be chance); None if unknown."""
        return None if self.noise is None else abs(self.value) <= NOISE_SIGMAS * self.noise

    def could_part(self, seeds: int, most: int) -> bool:
        """Whether racing from `seeds` to `most` seeds each could make this margin signal. Were the margin seen so far
        the true one, with the noise falling as 1/sqrt(seeds), it must reach half of NOISE_SIGMAS standard deviations
        by the limit: below that, the chance it ends beyond the noise is about 1 in 6 or less, and a race run to its
        limit would mostly buy a tie at full price."""
        return self.noise is None or abs(self.value) >= NOISE_SIGMAS / 2 * self.noise * math.sqrt(seeds / max(seeds, most))

    def describe(self, unit: str = "") -> str:
        if self.noise is None:
            return f"by {self.value:.4g}{unit} (seed noise unknown: measure it with repeats >= 2)"
        verdict = ("inside the seed noise: this ranking may be chance" if self.inside_noise
                   else "more than the seed noise")
        return f"by {self.value:.4g}{unit} +- {self.noise:.2g} (1 std of the difference), {verdict}"

    def to_dict(self) -> dict:
        return {"value": self.value, "noise_std": self.noise, "sigmas": NOISE_SIGMAS, "inside_noise": self.inside_noise}
