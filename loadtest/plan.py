"""The load plan: users per step, open or closed loop, and the step list locust's shape follows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadtest.summary import Gates


@dataclass(frozen=True)
class LoadTest:
    url: str
    scenario: str = "mixed"
    duration_s: float = 30.0
    users: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests/s
    steps: int = 1  # a stepped ramp: the load rises in equal steps to `users` or `rate`
    p99_bound_ms: float = 100.0  # the latency bound of the capacity search
    gates: Gates = field(default_factory=Gates)
    workers: int = 0  # locust worker processes on this machine (master/worker mode)
    expect_workers: int = 0  # workers on other machines to wait for (master/worker mode)
    master_port: int = 5557
    request_timeout_s: float = 30.0
    ready_timeout_s: float = 30.0
    seed: int = 0
    max_user_rate: float = 10.0  # open loop: requests/s one simulated user sends at most


@dataclass(frozen=True)
class Step:
    users: int
    offered_rate: float | None  # open loop: users x the per-user rate
    seconds: float


@dataclass(frozen=True)
class Plan:
    mode: str  # "open" or "closed"
    per_user_rate: float  # open loop; 0 for closed
    steps: list[Step]


def make_plan(test: LoadTest) -> Plan:
    """Users per step. Open loop: every user sends at one Poisson rate, so a step's rate is its user count times it."""
    if test.users is not None and test.rate is not None:
        raise ValueError("give --users (closed loop) or --rate (open loop), not both")
    if not (test.duration_s > 0 and math.isfinite(test.duration_s)):
        raise ValueError(f"--duration must be a positive number of seconds, not {test.duration_s}")
    if test.steps < 1 or test.duration_s / test.steps < 2:
        raise ValueError(f"--steps {test.steps}: each step needs 2 s at least (--duration {test.duration_s:g} s)")
    seconds = test.duration_s / test.steps
    if test.rate is None:
        users = 8 if test.users is None else test.users
        if users < 1:
            raise ValueError(f"--users must be at least 1, not {users}")
        if users < test.steps:
            raise ValueError(f"--steps {test.steps} needs at least as many --users")
        return Plan("closed", 0.0, [Step(round(users * k / test.steps), None, seconds) for k in range(1, test.steps + 1)])
    if not (test.rate > 0 and math.isfinite(test.rate)):
        raise ValueError(f"--rate must be a positive number of requests/s, not {test.rate}")
    first = test.rate / test.steps
    users = math.ceil(first / test.max_user_rate)
    per_user = first / users
    return Plan("open", per_user, [Step(users * k, users * k * per_user, seconds) for k in range(1, test.steps + 1)])


def format_steps(plan: Plan) -> str:
    """The plan as locust's --effx-steps option: 'users:seconds,...'."""
    return ",".join(f"{s.users}:{s.seconds!r}" for s in plan.steps)


def parse_steps(text: str) -> list[tuple[int, float]]:
    """'5:10,10:10' -> [(5, 10.0), (10, 10.0)]: users and seconds per step."""
    steps = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        users, _, seconds = item.partition(":")
        try:
            steps.append((int(users), float(seconds)))
        except ValueError:
            raise ValueError(f"--effx-steps: {item!r} is not users:seconds") from None
        if steps[-1][0] < 0 or not steps[-1][1] > 0:
            raise ValueError(f"--effx-steps: {item!r} needs users >= 0 and seconds > 0")
    return steps
