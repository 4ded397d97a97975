"""The multi-objective reward of MnasNet and the paper: ACC(m) x (LAT(m) / T)^w.

w = alpha when LAT <= T and beta when LAT > T. alpha = beta = -0.07 (the default) is MnasNet's soft
trade-off: twice the latency costs about 5% of the reward whichever side of the target it falls;
alpha = 0, beta = -1 is its hard constraint: no gain below T, a steep fall above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.errors import SpecError

MNASNET_W = -0.07


def reward(accuracy: float, latency_ms: float, target_ms: float, w_below: float = MNASNET_W, w_above: float = MNASNET_W) -> float:
    """ACC * (LAT / T)^w, w = w_below if LAT <= T else w_above."""
    if not (latency_ms > 0 and target_ms > 0 and math.isfinite(latency_ms) and math.isfinite(target_ms)):
        raise SpecError(f"latency and target must be positive, got {latency_ms} and {target_ms}")
    w = w_below if latency_ms <= target_ms else w_above
    return accuracy * (latency_ms / target_ms) ** w


@dataclass(frozen=True)
class Reward:
    """The reward with its target T (ms) and exponents; checked, so a search never starts with a meaningless one."""

    target_ms: float
    alpha: float = MNASNET_W  # the exponent at or below the target
    beta: float = MNASNET_W  # the exponent above it

    def __post_init__(self) -> None:
        if not (isinstance(self.target_ms, int | float) and math.isfinite(self.target_ms) and self.target_ms > 0):
            raise SpecError(f"the latency target T must be a positive number of ms, got {self.target_ms!r}")
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if not (isinstance(value, int | float) and math.isfinite(value) and -10 <= value <= 0):
                raise SpecError(f"reward exponent {name} must be in [-10, 0] (a positive one rewards slower models), got {value!r}")

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        return reward(accuracy, latency_ms, self.target_ms, self.alpha, self.beta)
