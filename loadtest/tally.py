"""What the load generator saw, in a form that adds up across users, worker processes and machines.

Latencies go into log-spaced histograms (1% wide buckets), so a worker ships counts to the master instead
of every sample, and percentiles of the merged histogram are as exact as the bucket width. Requests are
counted by the second they were meant to be sent, so a stepped ramp's steps can be cut out afterwards.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

_FLOOR_MS = 0.01
_GROWTH = 1.01

# Outcomes of one request; everything but OK and the SLA refusals is an error of the system under test or the generator.
OK = "ok"
SLA_REJECTED = "sla_rejected"  # 422 with the nearest options: the router's admission control, counted against attainment
SLA_REFUSED = "sla_refused"  # 429 with reason overload or deadline: the server could not meet the bound under its load
SLA_REFUSALS = (SLA_REJECTED, SLA_REFUSED)
ERRORS = ("overloaded", "server_error", "client_error", "connection", "bad_answer", "dropped")


class Histogram:
    """Counts of latencies in buckets 1% wide from 0.01 ms up; mergeable; percentiles are bucket upper edges."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total_ms = 0.0
        self.max_ms = 0.0

    @staticmethod
    def bucket(ms: float) -> int:
        return max(0, math.ceil(math.log(max(ms, _FLOOR_MS) / _FLOOR_MS, _GROWTH)))

    @staticmethod
    def upper_edge(bucket: int) -> float:
        return _FLOOR_MS * _GROWTH**bucket

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, ms: float) -> None:
        self.counts[self.bucket(ms)] += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)
        self.total_ms += other.total_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def mean(self) -> float | None:
        return self.total_ms / self.count if self.count else None

    def percentile(self, q: float, late: int = 0) -> float | None:
        """The q-th percentile (0..100); `late` more samples count as infinitely slow (failed requests)."""
        n = self.count + late
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n / 100 - 1e-9))  # 99.9% of 1000 is 999, not 999.0000000000001
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(self.upper_edge(bucket), self.max_ms)
        return math.inf

    def to_json(self) -> dict:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "total_ms": self.total_ms, "max_ms": self.max_ms}

    @classmethod
    def from_json(cls, data: dict) -> Histogram:
        histogram = cls()
        histogram.counts.update({int(k): int(v) for k, v in data["counts"].items()})
        histogram.total_ms, histogram.max_ms = float(data["total_ms"]), float(data["max_ms"])
        return histogram


@dataclass
class ClassCounts:
    """One request class (accuracy, latency, both, none; batch requests are classes of their own)."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    attained: int = 0  # answered and the server says the SLA was met (the contract: member accuracy, queue + inference)
    attained_e2e: int = 0  # ... and the client-side latency, HTTP and decoding included, was within max_latency_ms
    members: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)  # answered (200) requests only


@dataclass
class SecondCounts:
    """One wall-clock second: the requests meant to be sent in it, and the answers that arrived in it."""

    ok: int = 0
    answered: int = 0  # answers (200) that arrived in this second, whenever they were sent: the achieved throughput
    failed: int = 0  # errors (of the server or the generator)
    rejected: int = 0  # 422: no member could meet the SLA (the router's admission control, not an error)
    latency: Histogram = field(default_factory=Histogram)


@dataclass(frozen=True)
class Outcome:
    """One finished request, as the generator judged it."""

    request_class: str
    sent_at: float  # epoch seconds when it was meant to be sent
    latency_ms: float  # from the intended send time to the last byte of the answer
    kind: str  # OK, one of SLA_REFUSALS or one of ERRORS
    member: str | None = None
    attained: bool = False
    attained_e2e: bool = False
    detail: str = ""


class Tally:
    def __init__(self) -> None:
        self.classes: dict[str, ClassCounts] = {}
        self.seconds: dict[int, SecondCounts] = {}
        self.examples: dict[str, str] = {}  # the first message seen of each error kind
        self.lag = Histogram()  # open loop: how late the generator sent requests (its own overload shows here)

    def _class(self, name: str) -> ClassCounts:
        return self.classes.setdefault(name, ClassCounts())

    def sent(self, request_class: str) -> None:
        self._class(request_class).sent += 1

    def record(self, outcome: Outcome) -> None:
        counts = self._class(outcome.request_class)
        counts.outcomes[outcome.kind] += 1
        second = self.seconds.setdefault(int(outcome.sent_at), SecondCounts())
        if outcome.kind == OK:
            counts.latency.add(outcome.latency_ms)
            counts.attained += outcome.attained
            counts.attained_e2e += outcome.attained_e2e
            if outcome.member:
                counts.members[outcome.member] += 1
            second.ok += 1
            second.latency.add(outcome.latency_ms)
            self.seconds.setdefault(int(outcome.sent_at + outcome.latency_ms / 1000), SecondCounts()).answered += 1
        elif outcome.kind in SLA_REFUSALS:
            second.rejected += 1
        else:
            second.failed += 1
            self.examples.setdefault(outcome.kind, outcome.detail[:300])

    def merge(self, other: Tally) -> None:
        for name, theirs in other.classes.items():
            mine = self._class(name)
            mine.sent += theirs.sent
            mine.outcomes.update(theirs.outcomes)
            mine.attained += theirs.attained
            mine.attained_e2e += theirs.attained_e2e
            mine.members.update(theirs.members)
            mine.latency.merge(theirs.latency)
        for second, theirs in other.seconds.items():
            mine = self.seconds.setdefault(second, SecondCounts())
            mine.ok += theirs.ok
            mine.answered += theirs.answered
            mine.failed += theirs.failed
            mine.rejected += theirs.rejected
            mine.latency.merge(theirs.latency)
        for kind, example in other.examples.items():
            self.examples.setdefault(kind, example)
        self.lag.merge(other.lag)

    def take(self) -> Tally:
        """Hand over everything counted so far and start afresh (a worker's report to the master)."""
        taken = Tally()
        taken.__dict__, self.__dict__ = self.__dict__, taken.__dict__
        return taken

    def to_json(self) -> dict:
        return {
            "classes": {name: {"sent": c.sent, "outcomes": dict(c.outcomes), "attained": c.attained, "attained_e2e": c.attained_e2e,
                               "members": dict(c.members), "latency": c.latency.to_json()} for name, c in self.classes.items()},
            "seconds": {str(s): {"ok": c.ok, "answered": c.answered, "failed": c.failed, "rejected": c.rejected, "latency": c.latency.to_json()} for s, c in self.seconds.items()},
            "examples": dict(self.examples),
            "lag": self.lag.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        tally = cls()
        for name, c in data["classes"].items():
            tally.classes[name] = ClassCounts(c["sent"], Counter(c["outcomes"]), c["attained"], c["attained_e2e"],
                                              Counter(c["members"]), Histogram.from_json(c["latency"]))
        for second, c in data["seconds"].items():
            tally.seconds[int(second)] = SecondCounts(c["ok"], c["answered"], c["failed"], c["rejected"], Histogram.from_json(c["latency"]))
        tally.examples = dict(data["examples"])
        tally.lag = Histogram.from_json(data["lag"])
        return tally
