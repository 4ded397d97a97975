"""The SLA contract (docs/serving.md) as one pure function of the members' expected latencies.

| request        | choice                                                         |
| accuracy only  | the fastest member with accuracy >= min_accuracy               |
| latency only   | the most accurate member whose expected latency <= max_latency |
| both           | the fastest member meeting both                                |
| neither        | the server's default policy (most_accurate or fastest)         |
| none feasible  | reject with the nearest options, or serve the nearest (best_effort) and flag the miss |

"Nearest" = the smallest relative shortfall: (min_accuracy - accuracy) / min_accuracy plus
(expected - max_latency) / max_latency, each counted only when positive. Ties go to the faster member,
then to the more accurate one, then by name, so decisions are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from effx_serve.core.errors import UserError

POLICIES = ("most_accurate", "fastest")
ON_MISS = ("reject", "best_effort")
ROUTES = ("preferred", "scaled", "moved", "best_effort")  # how an answered request was placed (the answer and /metrics say)


@dataclass(frozen=True)
class Sla:
    min_accuracy: float | None = None  # top-1, 0..1
    max_latency_ms: float | None = None  # end to end in the server
    on_miss: str = "reject"
    kind: str = field(init=False, repr=False, compare=False)  # the request class: accuracy, latency, both or none (a metrics label)

    def __post_init__(self) -> None:
        if self.min_accuracy is not None and not (isinstance(self.min_accuracy, int | float) and 0.0 <= self.min_accuracy <= 1.0):
            raise UserError(f"min_accuracy must be a top-1 fraction from 0 to 1, not {self.min_accuracy!r}")
        latency = self.max_latency_ms
        if latency is not None and not (isinstance(latency, int | float) and math.isfinite(latency) and latency > 0):
            raise UserError(f"max_latency_ms must be a finite number of milliseconds above 0, not {latency!r}")
        if self.on_miss not in ON_MISS:
            raise UserError(f"on_miss must be one of {', '.join(ON_MISS)}, not {self.on_miss!r}")
        # Set once (asked for several times per request): frozen, hence object.__setattr__.
        object.__setattr__(self, "kind", {(True, True): "both", (True, False): "accuracy", (False, True): "latency"}.get(
            (self.min_accuracy is not None, latency is not None), "none"))

    def accuracy_ok(self, accuracy: float) -> bool:
        return self.min_accuracy is None or accuracy >= self.min_accuracy

    def latency_ok(self, latency_ms: float) -> bool:
        return self.max_latency_ms is None or latency_ms <= self.max_latency_ms


class Option(NamedTuple):  # a NamedTuple, as Decision: several are made per request, at a third of a frozen dataclass's cost
    name: str
    accuracy: float
    expected_ms: float


class Decision(NamedTuple):
    member: str | None  # None: rejected
    expected_to_meet: bool
    nearest: tuple[Option, ...]  # when nothing is feasible: the options, nearest first; else empty


def shortfall(option: Option, sla: Sla) -> float:
    """How far an option is from the SLA, relative to it; 0 when it meets it."""
    total = 0.0
    if sla.min_accuracy is not None and option.accuracy < sla.min_accuracy:
        total += (sla.min_accuracy - option.accuracy) / max(sla.min_accuracy, 1e-9)
    if sla.max_latency_ms is not None and option.expected_ms > sla.max_latency_ms:
        total += (option.expected_ms - sla.max_latency_ms) / sla.max_latency_ms
    return total


def _fastest(option: Option) -> tuple:
    return (option.expected_ms, -option.accuracy, option.name)


def _most_accurate(option: Option) -> tuple:
    return (-option.accuracy, option.expected_ms, option.name)


def route(options: Sequence[Option], sla: Sla, policy: str = "most_accurate") -> Decision:
    """The member that serves a request with `sla`, among `options` (each with its current expected latency)."""
    if not options:
        raise UserError("there is no member to route to")
    if policy not in POLICIES:
        raise UserError(f"unknown default policy '{policy}' (known: {', '.join(POLICIES)})")
    feasible = [o for o in options if sla.accuracy_ok(o.accuracy) and sla.latency_ok(o.expected_ms)]
    if feasible:
        if sla.kind == "latency" or (sla.kind == "none" and policy == "most_accurate"):
            return Decision(min(feasible, key=_most_accurate).name, True, ())
        return Decision(min(feasible, key=_fastest).name, True, ())
    nearest = tuple(sorted(options, key=lambda o: (shortfall(o, sla), *_fastest(o))))
    return Decision(nearest[0].name if sla.on_miss == "best_effort" else None, False, nearest)
