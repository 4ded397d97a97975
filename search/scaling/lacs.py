"""Latency-aware compound scaling (LACS, the paper's Section 4) and family generation.

Compound scaling: depth = alpha^phi, width = beta^phi, resolution = base * gamma^phi, with
alpha * beta^2 * gamma^2 ~= 2 and alpha, beta, gamma >= 1, so phi is the log2 of the cost budget.
EfficientNet picked (alpha, beta, gamma) by accuracy alone; LACS ranks the same grid by the
accuracy-latency reward ACC * (LAT / T)^w of each triplet's phi = 1 model, with LAT measured on the
target hardware, then searches a finer grid around the best triplets.

Evaluators are plain callables (spec -> accuracy, spec -> latency in ms), so the search itself is
independent of how accuracy is obtained (proxy training) and where latency comes from (the profiler).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from search.reward import MNASNET_W, reward
from training.arch.plan import expand
from training.arch.spec import ModelSpec
from training.errors import SpecError

# EfficientNet's per-member cost budgets d*w^2*r^2 (about 1.26, 1.96, 3.6, 10.1, 23.3, 46.8, 89) as phi = log2(budget).
DEFAULT_PHIS = (0.0, 0.33, 0.97, 1.85, 3.34, 4.54, 5.55, 6.48)
EFFICIENTNET_COEFFICIENTS = (1.2, 1.1, 1.15)
PAPER_COEFFICIENTS = {"gpu": (1.28, 1.17, 1.07), "tpu": (1.25, 1.17, 1.09), "accuracy-only": EFFICIENTNET_COEFFICIENTS}


@dataclass(frozen=True)
class Coefficients:
    alpha: float  # depth
    beta: float  # width
    gamma: float  # resolution

    def __post_init__(self) -> None:
        for name, value in (("alpha", self.alpha), ("beta", self.beta), ("gamma", self.gamma)):
            if not (isinstance(value, int | float) and math.isfinite(value) and 1.0 <= value <= 4.0):
                raise SpecError(f"scaling coefficient {name} must be a number in [1, 4], got {value!r}")

    @property
    def cost(self) -> float:
        """alpha * beta^2 * gamma^2: the cost multiplier of one step of phi (2 in the paper's constraint)."""
        return self.alpha * self.beta**2 * self.gamma**2

    def astuple(self) -> tuple[float, float, float]:
        return (self.alpha, self.beta, self.gamma)

    @classmethod
    def parse(cls, text: str) -> Coefficients:
        parts = text.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise SpecError(f"coefficients are three numbers ALPHA,BETA,GAMMA such as 1.2,1.1,1.15, got '{text}'")
        return cls(*values)


def scale(base: ModelSpec, coefficients: Coefficients, phi: float, name: str | None = None) -> ModelSpec:
    """The member at compound coefficient phi: depth and width multipliers to two decimals (as the reference
    tables give them), the resolution to a whole pixel."""
    if not (math.isfinite(phi) and 0 <= phi <= 12):
        raise SpecError(f"phi must be in [0, 12], got {phi}")
    depth = round(base.depth * coefficients.alpha**phi, 2)
    width = round(base.width * coefficients.beta**phi, 2)
    resolution = round(base.resolution * coefficients.gamma**phi)
    return base.with_(depth=depth, width=width, resolution=resolution, name=name or f"{base.name}-phi{phi:g}")


def family(base: ModelSpec, coefficients: Coefficients, phis: Sequence[float] = DEFAULT_PHIS, prefix: str | None = None) -> list[ModelSpec]:
    """Members B0..Bn of the family: `prefix`-b<i> at phis[i]."""
    members, problem = valid_family(base, coefficients, phis, prefix)
    if problem:
        raise SpecError(problem)
    return members


def valid_family(base: ModelSpec, coefficients: Coefficients, phis: Sequence[float] = DEFAULT_PHIS,
                 prefix: str | None = None) -> tuple[list[ModelSpec], str | None]:
    """The members up to the first one the coefficients make invalid (e.g. (2, 1, 1) at phi 6.48 asks for 89x the
    depth), and what is wrong with that one (None when all are valid): larger phis only grow further."""
    if list(phis) != sorted(phis):
        raise SpecError(f"phi values must be increasing, got {list(phis)}")
    prefix = prefix or base.name
    members = []
    for index, phi in enumerate(phis):
        try:
            members.append(scale(base, coefficients, phi, f"{prefix}-b{index}"))
        except SpecError as error:
            return members, f"{prefix}-b{index} (phi {phi:g}): {error}"
    return members, None


def member_row(spec: ModelSpec, phi: float | None = None) -> dict:
    plan = expand(spec)
    return {"name": spec.name, "phi": phi, "depth": spec.depth, "width": spec.width, "resolution": plan.resolution,
            "blocks": len(plan.blocks), "params": plan.params, "macs": plan.macs}


MIN_GRID_STEP, MAX_GRID_STEP = 0.01, 0.5  # a finer grid has millions of points: building it alone would take hours


def coefficient_grid(step: float = 0.05, target: float = 2.0, tolerance: float = 0.1, maximum: float = 2.0) -> list[Coefficients]:
    """Every (alpha, beta, gamma) on a `step` grid in [1, maximum] with |alpha beta^2 gamma^2 - target| <= tolerance."""
    if not MIN_GRID_STEP <= step <= MAX_GRID_STEP:
        raise SpecError(f"grid step must be in [{MIN_GRID_STEP}, {MAX_GRID_STEP}], got {step}")
    values = [round(1.0 + i * step, 6) for i in range(int(round((maximum - 1.0) / step)) + 1)]
    grid = [Coefficients(a, b, g) for a, b, g in itertools.product(values, repeat=3) if abs(a * b * b * g * g - target) <= tolerance]
    if not grid:
        raise SpecError(f"no (alpha, beta, gamma) on a {step} grid has alpha*beta^2*gamma^2 within {tolerance} of {target}")
    return grid


def refine(center: Coefficients, step: float, target: float = 2.0, tolerance: float = 0.05) -> list[Coefficients]:
    """A finer grid (spacing `step`) within one coarse step of `center`, on the same constraint."""
    def around(value: float) -> list[float]:
        return [round(value + k * step, 6) for k in range(-2, 3) if value + k * step >= 1.0]

    return [Coefficients(a, b, g) for a, b, g in itertools.product(around(center.alpha), around(center.beta), around(center.gamma))
            if abs(a * b * b * g * g - target) <= tolerance and max(a, b, g) <= 4.0]


@dataclass(frozen=True)
class Trial:
    coefficients: Coefficients
    accuracy: float
    latency_ms: float
    reward: float
    stage: str  # "coarse" or "fine"


def search(base: ModelSpec, accuracy_of: Callable[[ModelSpec], float], latency_of: Callable[[ModelSpec], float], target_ms: float,
           grid: Sequence[Coefficients], fine_step: float | None = None, top_k: int = 2, w: float = MNASNET_W,
           progress: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Score each triplet's phi = 1 model; then (with `fine_step`) a finer grid around the `top_k` best by reward.

    Returns every trial; `best(trials)` picks the LACS winner, `best(trials, "accuracy")` the accuracy-only one.
    """
    trials: list[Trial] = []
    seen: set[tuple[float, float, float]] = set()

    def run(candidates: Sequence[Coefficients], stage: str) -> None:
        for coefficients in candidates:
            if coefficients.astuple() in seen:
                continue
            seen.add(coefficients.astuple())
            spec = scale(base, coefficients, 1.0)
            accuracy, latency = accuracy_of(spec), latency_of(spec)
            trial = Trial(coefficients, accuracy, latency, reward(accuracy, latency, target_ms, w, w), stage)
            trials.append(trial)
            if progress:
                progress(trial)

    run(grid, "coarse")
    if fine_step:
        for leader in sorted(trials, key=lambda t: -t.reward)[:top_k]:
            run(refine(leader.coefficients, fine_step), "fine")
    return trials


def ranked(trials: Sequence[Trial], by: str = "reward") -> list[Trial]:
    """The trials best first by `by` (reward or accuracy), the faster first on a tie."""
    return sorted(trials, key=lambda t: (t.reward if by == "reward" else t.accuracy, -t.latency_ms), reverse=True)


def best(trials: Sequence[Trial], by: str = "reward") -> Trial:
    if not trials:
        raise SpecError("no LACS trials to choose from")
    return ranked(trials, by)[0]
