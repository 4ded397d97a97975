"""The load plan: users per step, open or closed loop, and the step list locust's shape follows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadtest.arrivals import Arrivals, TraceRequest, arrival_times, trace_seconds
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
    arrivals: Arrivals = field(default_factory=Arrivals)  # anything but Poisson: one user replays a schedule
    trace: tuple[TraceRequest, ...] | None = None  # the arrival times (and bounds) of a trace file instead of --rate
    trace_path: str | None = None  # where the trace came from, for the report
    params: str = ""  # a query string added to every request (e.g. member=NAME: one member's capacity alone)
    deadline_header: bool = True  # requests with a latency bound carry their absolute deadline (Effx-Deadline)

    @property
    def replays(self) -> bool:
        """Whether the load is a schedule made up front (bursty arrivals or a trace) rather than Poisson users."""
        return self.trace is not None or self.arrivals.kind != "poisson"


@dataclass(frozen=True)
class Step:
    users: int
    offered_rate: float | None  # open loop: users x the per-user rate
    seconds: float


@dataclass(frozen=True)
class Plan:
    mode: str  # "open" or "closed"
    per_user_rate: float  # open loop; 0 for closed (and for a replayed schedule)
    steps: list[Step]
    replay: bool = False  # one user replays a schedule (raw/schedule.json) instead of users at a Poisson rate


def make_plan(test: LoadTest, replay: bool = False) -> Plan:
    """Users per step. Open loop: every user sends at one Poisson rate, so a step's rate is its user count times it.

    Bursty arrivals, a trace, or `replay` (a comparison: the same schedule sent several times): one user replays a
    schedule made up front, and each step is the rate that schedule offers.
    """
    if test.users is not None and test.rate is not None:
        raise ValueError("give --users (closed loop) or --rate (open loop), not both")
    test.arrivals.check()
    if test.replays or replay:
        return _replay_plan(test)
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


MAX_RATE = 100_000  # requests/s: beyond any one load generator, and a typo's schedule would not fit in memory
MAX_SCHEDULED = 5_000_000  # requests in a schedule made up front (about 100 MB of it)


def _replay_plan(test: LoadTest) -> Plan:
    """One user replaying a schedule: a trace's, or bursty arrivals at --rate (in --steps equal steps)."""
    what = "--trace" if test.trace is not None else f"--arrivals {test.arrivals.kind}" if test.replays else "--compare"
    if test.users is not None:
        raise ValueError(f"{what} is an open-loop schedule: it does not go with --users")
    if test.workers or test.expect_workers:
        raise ValueError(f"{what} is replayed by one locust process: it does not go with --workers or --expect-workers")
    if test.trace is not None:
        if test.rate is not None:
            raise ValueError("--trace sets the arrival times: give --trace or --rate, not both")
        if test.arrivals.kind != "poisson":
            raise ValueError("--trace sets the arrival times: it does not go with --arrivals")
        if test.steps != 1:
            raise ValueError("--trace sets the arrival times: it does not go with --steps")
        if not test.trace:
            raise ValueError(f"trace {test.trace_path}: no request within the first {test.duration_s:g} s")
        seconds = trace_seconds(list(test.trace))
        return Plan("open", 0.0, [Step(1, len(test.trace) / seconds, seconds)], replay=True)
    if test.rate is None:
        raise ValueError(f"{what} needs --rate (the mean requests/s)")
    plan = make_plan(LoadTest(test.url, duration_s=test.duration_s, rate=test.rate, steps=test.steps))  # checks rate and steps
    if test.rate * test.duration_s > MAX_SCHEDULED:
        raise ValueError(f"--rate {test.rate:g} for {test.duration_s:g} s is {test.rate * test.duration_s:,.0f} requests to schedule "
                         f"up front, more than {MAX_SCHEDULED:,}: lower either")
    return Plan("open", 0.0, [Step(1, s.offered_rate, s.seconds) for s in plan.steps], replay=True)


def schedule_times(test: LoadTest, plan: Plan) -> tuple[list[float], list[float | None]]:
    """The arrival times (seconds from the start) and latency bounds (None: not given) a plan's schedule sends."""
    if test.trace is not None:
        return [r.at_s for r in test.trace], [r.bound_ms for r in test.trace]
    times = arrival_times(test.arrivals, [(s.offered_rate, s.seconds) for s in plan.steps], test.seed)
    return times, [None] * len(times)


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
