"""From what the generator counted to the report's figures: totals, classes, members, steps, capacity, gates."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from loadtest.tally import ERRORS, OK, SLA_REFUSED, SLA_REJECTED, Histogram, SecondCounts, Tally

PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p99.9": 99.9}
SETTLE_S = 2.0  # the start of every step (a fifth of shorter steps) is left out of its figures while queues fill or drain


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def latency_figures(histogram: Histogram) -> dict:
    figures = {name: histogram.percentile(q) for name, q in PERCENTILES.items()}
    return figures | {"max": histogram.max_ms if histogram.count else None, "mean": histogram.mean()}


def totals(tally: Tally, seconds: float) -> dict:
    sent = sum(c.sent for c in tally.classes.values())
    outcomes: Counter[str] = Counter()
    for counts in tally.classes.values():
        outcomes.update(counts.outcomes)
    completed = sum(outcomes.values())
    latency = Histogram()
    for counts in tally.classes.values():
        latency.merge(counts.latency)
    errors = {kind: {"count": outcomes[kind], "example": tally.examples.get(kind, "")} for kind in ERRORS if outcomes.get(kind)}
    if "setup" in tally.examples:
        errors["setup"] = {"count": 0, "example": tally.examples["setup"]}
    # A request never answered (still in flight when the run ended) counts as an error.
    n_errors = sum(outcomes.get(kind, 0) for kind in ERRORS) + sent - completed
    return {
        "requests": sent, "completed": completed, "ok": outcomes.get(OK, 0),
        # Refused by SLA: 422 (no member can meet it) and, from a server that says so, 429 (not under the current load).
        "sla_rejected": outcomes.get(SLA_REJECTED, 0) + outcomes.get(SLA_REFUSED, 0), "sla_refused_429": outcomes.get(SLA_REFUSED, 0),
        "unfinished": sent - completed, "throughput_rps": outcomes.get(OK, 0) / seconds if seconds > 0 else None,
        "error_rate": n_errors / sent if sent else None, "errors": errors, "latency_ms": latency_figures(latency),
        "generator": {"lag_p99_ms": tally.lag.percentile(99), "dropped": outcomes.get("dropped", 0)},
    }


def classes(tally: Tally) -> list[dict]:
    rows = []
    for name in sorted(tally.classes):
        c = tally.classes[name]
        completed = sum(c.outcomes.values())
        answered = c.outcomes.get(OK, 0)
        rows.append({
            "name": name, "requests": c.sent, "ok": answered, "outcomes": dict(c.outcomes),
            # Attainment counts every completed request: a rejection or an error is a missed SLA.
            "sla_attainment": c.attained / completed if completed else None,
            "e2e_attainment": c.attained_e2e / completed if completed else None,
            "latency_ms": latency_figures(c.latency),
            "members": {m: n / answered for m, n in sorted(c.members.items())} if answered else {},
        })
    return rows


def members(tally: Tally) -> dict:
    counts: dict[str, int] = {}
    for c in tally.classes.values():
        for member, n in c.members.items():
            counts[member] = counts.get(member, 0) + n
    total = sum(counts.values())
    return {m: {"requests": n, "share": n / total} for m, n in sorted(counts.items())}


@dataclass(frozen=True)
class Window:
    """One step as it ran: when it began and ended (epoch seconds) and the load it offered."""

    index: int
    users: int
    offered_rate: float | None  # open loop; None for a closed loop
    start: float
    end: float


def _seconds_in(tally: Tally, window: Window) -> list[SecondCounts]:
    """Whole seconds inside the step after it settled (partial ones when the step is too short for whole ones)."""
    settle = min(SETTLE_S, 0.2 * (window.end - window.start))
    first, last = math.ceil(window.start + settle), math.floor(window.end)
    if last <= first:
        first, last = math.floor(window.start + settle), math.ceil(window.end)
    return [tally.seconds.get(s, SecondCounts()) for s in range(first, last)]


def curve(tally: Tally, windows: list[Window], p99_bound_ms: float) -> list[dict]:
    points = []
    for window in windows:
        seconds = _seconds_in(tally, window)
        latency, failed, rejected = Histogram(), sum(s.failed for s in seconds), sum(s.rejected for s in seconds)
        for s in seconds:
            latency.merge(s.latency)
        done = latency.count + failed + rejected
        # MLPerf's Server rule: a request that failed is later than any bound. An SLA rejection is a quick, deliberate
        # answer; it is not counted as late, and its share is shown beside each step instead.
        p99 = latency.percentile(99, late=failed)
        points.append({"step": window.index, "users": window.users, "offered_rate": window.offered_rate,
                       "throughput_rps": sum(s.answered for s in seconds) / len(seconds) if seconds else None,
                       "p50_ms": _finite(latency.percentile(50, late=failed)), "p99_ms": _finite(p99),
                       "error_rate": failed / done if done else None, "rejected_share": rejected / done if done else None,
                       "within_bound": done > 0 and p99 is not None and p99 <= p99_bound_ms})
    return points


def capacity(points: list[dict], p99_bound_ms: float) -> dict:
    """The last step of the unbroken run of steps, from the first, that kept p99 within the bound."""
    best = None
    for point in points:
        if not point["within_bound"]:
            break
        best = point
    # Open loop: the offered rate the server sustained; closed loop offers no rate, so its throughput is the answer.
    return {"p99_bound_ms": p99_bound_ms, "step": best and best["step"],
            "max_rate": best and (best["offered_rate"] or best["throughput_rps"]), "throughput_rps": best and best["throughput_rps"],
            "basis": best and ("offered rate" if best["offered_rate"] else "throughput")}


def timeline(tally: Tally, start: float, end: float) -> list[dict]:
    rows = []
    for second in range(math.floor(start), math.ceil(end)):
        counts = tally.seconds.get(second, SecondCounts())
        rows.append({"t": second - math.floor(start), "ok": counts.answered, "failed": counts.failed, "rejected": counts.rejected,
                     "p99_ms": counts.latency.percentile(99)})
    return rows


@dataclass(frozen=True)
class Gates:
    """Thresholds a run must meet (None: not checked)."""

    max_error_rate: float | None = 0.01
    max_p99_ms: float | None = None
    min_sla_attainment: float | None = None
    min_capacity_rps: float | None = None


def check_gates(gates: Gates, summary: dict, class_rows: list[dict], capacity_: dict | None) -> list[dict]:
    rows = []

    def gate(name: str, threshold: str, value: float | None, passed: bool) -> None:
        rows.append({"name": name, "threshold": threshold, "value": value, "passed": passed})

    if gates.max_error_rate is not None:
        rate = summary["error_rate"]
        gate("error rate", f"<= {gates.max_error_rate:g}", rate, rate is not None and rate <= gates.max_error_rate)
    if gates.max_p99_ms is not None:
        p99 = summary["latency_ms"]["p99"]
        gate("p99 latency (ms)", f"<= {gates.max_p99_ms:g}", p99, p99 is not None and p99 <= gates.max_p99_ms)
    if gates.min_sla_attainment is not None:
        with_sla = [row for row in class_rows if not row["name"].endswith("none")]
        if not with_sla:
            gate("SLA attainment", f">= {gates.min_sla_attainment:g}", None, False)
        for row in with_sla:
            value = row["sla_attainment"]
            gate(f"SLA attainment: {row['name']}", f">= {gates.min_sla_attainment:g}", value,
                 value is not None and value >= gates.min_sla_attainment)
    if gates.min_capacity_rps is not None:
        value = capacity_ and capacity_["max_rate"]
        gate("capacity (req/s)", f">= {gates.min_capacity_rps:g}", value, value is not None and value >= gates.min_capacity_rps)
    return rows
