"""The server's /metrics before and after a run, and what changed in between."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout_s: float = 5.0) -> tuple[str | None, str | None]:
    """(text, None), or (None, why not)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as answer:
            return answer.read().decode(), None
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, f"GET /metrics failed: {getattr(error, 'reason', error)}"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: str, after: str) -> dict:
    """Counters and histogram sums over the run, keyed the way the report prints them."""
    old, new = _samples(before), _samples(after)

    def change(name: str) -> dict[tuple, float]:
        return {labels: value - old.get((sample, labels), 0.0) for (sample, labels), value in new.items() if sample == name}

    def by(label: str, name: str, scale: float = 1.0) -> dict[str, float]:
        """A family's non-zero changes keyed by one label's value."""
        return {dict(labels)[label]: scale * n for labels, n in change(name).items() if n}

    requests = {" ".join(dict(labels)[k] for k in ("member", "endpoint", "status")): n
                for labels, n in change("effx_requests_total").items() if n}
    images = by("member", "effx_images_total")
    sums, counts = change("effx_batch_size_sum"), change("effx_batch_size_count")
    batch = {dict(labels)["member"]: sums.get(labels, 0.0) / n for labels, n in counts.items() if n}
    misses: dict[str, float] = defaultdict(float)
    for labels, n in change("effx_sla_misses_total").items():
        if n:
            misses[f"{dict(labels)['sla']} {dict(labels)['cause']}"] += n
    return {"requests": requests, "images": images, "mean_batch_size": batch, "sla_misses": dict(misses),
            "routes": by("outcome", "effx_routes_total"), "late_stage": by("stage", "effx_late_stage_total"),
            "gc_collections": by("generation", "effx_gc_pause_seconds_count"),
            "gc_pause_ms": by("generation", "effx_gc_pause_seconds_sum", scale=1000.0),
            "refusal_buckets": _cumulative(change("effx_refusal_seconds_bucket")),
            "expectation_error_buckets": _cumulative(change("effx_expectation_error_seconds_bucket")),
            **{f"decode_wait_{outcome}_buckets": _cumulative(change("effx_decode_wait_error_seconds_bucket"), outcome=outcome)
               for outcome in ("ran", "late")}}


def _cumulative(buckets: dict[tuple, float], **only: str) -> dict[str, float]:
    """A histogram's bucket counts over the run (of the samples whose labels include `only`), every other label but `le`
    summed: {le: cumulative count} (summable over rounds)."""
    total: dict[str, float] = defaultdict(float)
    for labels, n in buckets.items():
        labels = dict(labels)
        if all(labels.get(key) == value for key, value in only.items()):
            total[labels["le"]] += n
    return dict(total)


def quantile_bounds(cumulative: dict[str, float], shares: tuple[float, ...] = (0.5, 0.99)) -> dict:
    """From {le: cumulative count}: the count and, per share (p50, p99...), the upper bound in ms of the bucket holding that
    quantile (a bound, not a value: the server's buckets double from 0.25 ms; None beyond the last finite bound)."""
    bounds = sorted(cumulative, key=float)
    count = cumulative[bounds[-1]] if bounds else 0.0
    if not count:
        return {"count": 0}
    figures: dict = {"count": int(count)}
    for share in shares:
        edge = float(next(b for b in bounds if cumulative[b] >= share * count))
        figures[f"p{share * 100:g}_le_ms"] = None if edge == float("inf") else edge * 1000.0
    return figures
