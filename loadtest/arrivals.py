"""When requests are sent: arrival processes (Poisson, bursty gamma, on/off) deterministic for a seed, trace files, and
the schedule file the locustfile replays (one open-loop user, each request in its own greenlet at its time).

No locust here: the runner writes a schedule, the locustfile reads it.
"""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from loadtest.workload import PlannedRequest

ARRIVALS = ("poisson", "gamma", "onoff")
SEQUENTIAL_GAP_S = 0.05  # a sequential schedule: the pause between one answer and the next request
# --burstiness when not given: the coefficient of variation of gamma gaps, and the peak-to-mean rate of on/off.
DEFAULT_BURSTINESS = {"gamma": 3.0, "onoff": 4.0}
MAX_SPAN_S = 7 * 86400  # the longest run or trace: past a week a number is a typo, not a load test


@dataclass(frozen=True)
class Arrivals:
    """An arrival process. Every kind has the same mean rate; they differ in how the requests bunch up.

    poisson: independent exponential gaps (coefficient of variation 1).
    gamma: gamma-distributed gaps with coefficient of variation `burstiness` (> 1: bursts and lulls).
    onoff: Poisson at `burstiness` x the rate while "on", nothing while "off"; on periods last `burst_s` on average
    (exponential), off periods `burst_s` x (burstiness - 1), so the mean rate is the rate asked.
    """

    kind: str = "poisson"
    burstiness: float | None = None
    burst_s: float = 1.0

    def check(self) -> None:
        if self.kind not in ARRIVALS:
            raise ValueError(f"unknown arrivals {self.kind!r}; known: {', '.join(ARRIVALS)}")
        if self.kind == "poisson" and self.burstiness is not None:
            raise ValueError("--burstiness needs --arrivals gamma or onoff (Poisson arrivals have none to set)")
        if self.burstiness is not None and not (1 < self.burstiness < math.inf):
            raise ValueError(f"--burstiness must be a number above 1, not {self.burstiness:g}")
        if not (0 < self.burst_s < math.inf):
            raise ValueError(f"--burst-seconds must be a positive number, not {self.burst_s:g}")

    @property
    def factor(self) -> float:
        """The burstiness in use: the one given, else the kind's default (1 for Poisson)."""
        return self.burstiness if self.burstiness is not None else DEFAULT_BURSTINESS.get(self.kind, 1.0)

    def describe(self) -> str:
        if self.kind == "gamma":
            return f"gamma gaps, coefficient of variation {self.factor:g}"
        if self.kind == "onoff":
            return f"on/off Poisson, peak {self.factor:g}x the mean rate, on periods of {self.burst_s:g} s on average"
        return "Poisson"


def arrival_times(arrivals: Arrivals, segments: list[tuple[float, float]], seed: int = 0) -> list[float]:
    """Arrival times (seconds from 0, increasing) over consecutive (rate per second, seconds) segments."""
    arrivals.check()
    rng = random.Random(f"arrivals-{arrivals.kind}-{seed}")
    times: list[float] = []
    begins = 0.0
    on, switch_at = False, 0.0  # on/off: the state, and when it next changes (carried across segments)
    peak = arrivals.factor
    if arrivals.kind == "onoff":  # start in the stationary mix: on with probability 1/peak
        on = rng.random() < 1 / peak
        switch_at = rng.expovariate(1 / (arrivals.burst_s if on else arrivals.burst_s * (peak - 1)))
    for rate, seconds in segments:
        if not (rate > 0 and math.isfinite(rate)) or not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"a segment needs a positive rate and length, not {rate!r}/s for {seconds!r} s")
        ends, t = begins + seconds, begins
        if arrivals.kind == "poisson":
            while (t := t + rng.expovariate(rate)) < ends:
                times.append(t)
        elif arrivals.kind == "gamma":
            shape = 1 / peak**2  # CV of a gamma is 1/sqrt(shape); its mean shape x scale is 1/rate
            while (t := t + rng.gammavariate(shape, 1 / (rate * shape))) < ends:
                times.append(t)
        else:
            while t < ends:
                until = min(switch_at, ends)
                if on:  # Poisson at the peak rate until the period or the segment ends (memoryless: no bias)
                    while (t := t + rng.expovariate(rate * peak)) < until:
                        times.append(t)
                t = until
                if t >= switch_at:
                    on = not on
                    switch_at = t + rng.expovariate(1 / (arrivals.burst_s if on else arrivals.burst_s * (peak - 1)))
        begins = ends
    return times


# Trace files: one request per line, "arrival_ms [latency_bound_ms]"; blank lines and # comments allowed.

class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file, the line and the cause, on one line."""


@dataclass(frozen=True)
class TraceRequest:
    at_s: float  # seconds after the trace's first request
    bound_ms: float | None = None


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: {what} {text!r} is not a finite number")
    return value


def parse_trace(text: str, name: str) -> list[TraceRequest]:
    """The requests of a trace, their times shifted so the first is at 0 (only the gaps matter)."""
    rows: list[tuple[float, float | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"trace {name} line {number}"
        if len(fields) > 2:
            raise TraceError(f"{where}: expected 'arrival_ms [latency_bound_ms]', got {len(fields)} fields")
        at = _number(fields[0], "arrival_ms", where)
        if at < 0:
            raise TraceError(f"{where}: arrival_ms {fields[0]} is negative")
        if rows and at - rows[0][0] > MAX_SPAN_S * 1000:
            raise TraceError(f"{where}: arrival_ms {fields[0]} is more than a week after the first request's {rows[0][0]:g}")
        if rows and at < rows[-1][0]:
            raise TraceError(f"{where}: arrival_ms {fields[0]} is before the previous request's {rows[-1][0]:g}; times must not decrease")
        bound = None
        if len(fields) == 2:
            bound = _number(fields[1], "latency_bound_ms", where)
            if bound <= 0:
                raise TraceError(f"{where}: latency_bound_ms {fields[1]} must be positive")
        rows.append((at, bound))
    if not rows:
        raise TraceError(f"trace {name} holds no requests (only blank lines and comments)")
    first = rows[0][0]
    return [TraceRequest((at - first) / 1000.0, bound) for at, bound in rows]


def read_trace(path: str | Path, duration_s: float | None = None) -> list[TraceRequest]:
    """A trace file's requests; with `duration_s`, only those in its first `duration_s` seconds."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"trace {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TraceError(f"trace {path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    requests = parse_trace(text, str(path))
    if duration_s is not None:
        requests = [r for r in requests if r.at_s < duration_s]
    return requests


def trace_seconds(requests: list[TraceRequest]) -> float:
    """How long a trace's load lasts: from its first request to its last (at least 1 ms, so rates stay finite)."""
    return max(requests[-1].at_s, 0.001) if requests else 0.0


# The schedule file: what the locustfile's replaying user sends, and when.

@dataclass
class Schedule:
    """Requests at fixed times (seconds from the start). Each may carry a latency bound and an image.

    Without images the locustfile draws each request from the scenario, as the Poisson users do (the bound, when
    given, replaces the drawn latency SLA). With images every request is a single-image /v1/classify with
    max_latency_ms = its bound, the image given, its own `params` and whatever parameters the run adds (a
    comparison phase's). A `sequential` schedule ignores the times: each request is sent `SEQUENTIAL_GAP_S` after
    the previous one was answered (a calibration: latency at rest, measured the way the phases measure it).
    """

    times: list[float]
    bounds: list[float | None]
    images: list[int | None] = field(default_factory=list)  # an index into `blobs` per request, when fixed
    blobs: list[tuple[str, bytes]] = field(default_factory=list)  # (content type, bytes)
    params: list[str] = field(default_factory=list)  # a query string per request, added to its own (fixed schedules)
    sequential: bool = False

    def __post_init__(self) -> None:
        if not self.images:
            self.images = [None] * len(self.times)
        if not self.params:
            self.params = [""] * len(self.times)
        if not len(self.times) == len(self.bounds) == len(self.images) == len(self.params):
            raise ValueError("a schedule needs a bound, an image and parameters (or None) for every request")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def fixed(self) -> bool:
        return bool(self.blobs)

    def request(self, index: int, params: str = "") -> PlannedRequest:
        """Request `index` of a fixed schedule, with `params` (a query string) added to its own."""
        bound = self.bounds[index]
        query = {"top_k": 1} | ({"max_latency_ms": round(bound, 3)} if bound is not None else {})
        content_type, body = self.blobs[self.images[index] or 0]
        path = "/v1/classify?" + "&".join(filter(None, (urlencode(query), self.params[index], params)))
        return PlannedRequest("latency" if bound is not None else "none", path, body, content_type, 1, None, bound)

    def to_json(self) -> str:
        data = {"requests": [[t, b, i] for t, b, i in zip(self.times, self.bounds, self.images, strict=True)],
                "images": [{"content_type": kind, "data": base64.b64encode(blob).decode()} for kind, blob in self.blobs]}
        if any(self.params):
            data["params"] = self.params
        if self.sequential:
            data["sequential"] = True
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        data = json.loads(text)
        rows = data["requests"]
        return cls([float(r[0]) for r in rows], [None if r[1] is None else float(r[1]) for r in rows],
                   [None if r[2] is None else int(r[2]) for r in rows],
                   [(i["content_type"], base64.b64decode(i["data"])) for i in data.get("images", [])],
                   [str(p) for p in data.get("params", [])], bool(data.get("sequential", False)))
