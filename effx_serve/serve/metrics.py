"""Prometheus metrics of one server (a registry per app, so tests and several apps never share counters).

The counters and histograms a request updates are plain numbers, kept by the event loop (the only thread that updates
them) and turned into Prometheus families at scrape: prometheus_client's own take a lock and check their labels on
every call, a dozen calls a request, on the loop every request waits for (docs/serving-measurements.md times both). Gauges are set at scrape.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# Latency buckets from 0.25 ms to 10 s: small CPU members answer in about a millisecond.
_SECONDS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 5.0, 10.0)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
# Observed minus expected, both ways from 0 to 256 ms (a negative error is an answer sooner than expected).
_ERRORS = (-0.016, -0.008, -0.004, -0.002, -0.001, 0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256)


class _Count:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value, self.created = 0.0, time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Spread:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum, self.created = bounds, [0] * len(bounds), 0.0, time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value (`le`)
        self.sum += value


class _Family:
    """A labelled counter (`inc`) or histogram (`observe`, with `buckets`), registered in `registry`; `labels(*values)`
    as prometheus_client's, event loop only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry | None,
                 buckets: Sequence[float] | None = None) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = None if buckets is None else (*buckets, float("inf"))
        self._children: dict[tuple[str, ...], _Count | _Spread] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Count | _Spread:
        child = self._children.get(values)
        if child is None:  # a new label set, or values that are not strings yet
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {values}")
            key = tuple(map(str, values))
            child = self._children.get(key) or self._children.setdefault(key, _Count() if self.bounds is None else _Spread(self.bounds))
        return child

    def dump(self) -> list[list]:
        """Every label set's values as JSON-able lists [labels, value (a counter) or bucket counts (a histogram), sum, created]."""
        return [[list(values), child.value, 0.0, child.created] if isinstance(child, _Count) else [list(values), child.counts, child.sum, child.created]
                for values, child in list(self._children.items())]

    def merged(self, dumps: Sequence[list[list]]) -> _Family:
        """A copy, unregistered, with the values of `dumps` (other workers') added to this one's."""
        total = _Family(self.name, self.documentation, self.labelnames, None, None if self.bounds is None else self.bounds[:-1])
        for dump in (self.dump(), *dumps):
            for values, numbers, summed, created in dump:
                total._add(tuple(values), numbers, summed, created)
        return total

    def _add(self, values: tuple[str, ...], value: float | list[int], total: float, created: float) -> None:
        child = self.labels(*values)
        if isinstance(child, _Count):
            child.value += value
        else:
            child.counts = [a + b for a, b in zip(child.counts, value, strict=True)]
            child.sum += total
        child.created = min(child.created, created)

    def describe(self) -> list[Metric]:  # what the registry checks names against, without reading the values
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            if isinstance(child, _Count):
                family.add_metric(values, child.value, created=child.created)
            else:
                cumulative, buckets = 0, []
                for bound, count in zip(child.bounds, child.counts, strict=True):
                    cumulative += count
                    buckets.append((floatToGoString(bound), cumulative))
                family.add_metric(values, buckets, child.sum)
                family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)), child.created)
        yield family

    def _family(self) -> Metric:
        kind = CounterMetricFamily if self.bounds is None else HistogramMetricFamily
        return kind(self.name, self.documentation, labels=self.labelnames)


def Counter(name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry) -> _Family:  # noqa: N802
    return _Family(name, documentation, labelnames, registry)


def Histogram(name: str, documentation: str, labelnames: Sequence[str], *, buckets: Sequence[float],  # noqa: N802
              registry: CollectorRegistry) -> _Family:
    return _Family(name, documentation, labelnames, registry, buckets)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("effx_requests", "Classification requests by serving member, endpoint and HTTP status",
                                ["member", "endpoint", "status"], registry=r)
        self.images = Counter("effx_images", "Images classified, by member", ["member"], registry=r)
        self.request_seconds = Histogram("effx_request_seconds", "Request time in the server, end to end (read to answer), by member",
                                         ["member"], buckets=_SECONDS, registry=r)
        self.refusal_seconds = Histogram("effx_refusal_seconds", "Time in the server from a request's arrival to its refusal (422: sla; 429: "
                                         "overload, deadline or limit), by reason: a refusal should be quick", ["reason"], buckets=_SECONDS,
                                         registry=r)
        self.queue_seconds = Histogram("effx_queue_seconds", "Time an image waited for its batch, by member", ["member"],
                                       buckets=_SECONDS, registry=r)
        self.inference_seconds = Histogram("effx_inference_seconds", "Run time of one batch, by member", ["member"],
                                           buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("effx_batch_size", "Images per batch, by member", ["member"], buckets=_BATCH_SIZES, registry=r)
        self.sla_requests = Counter("effx_sla_requests", "Requests by SLA class (accuracy, latency, both, none)", ["sla"], registry=r)
        self.sla_misses = Counter("effx_sla_misses", "Requests whose SLA was not met, by class and cause (rejected, refused, accuracy, latency)",
                                  ["sla", "cause"], registry=r)
        self.routes = Counter("effx_routes", "How requests were placed: preferred (the member chosen at rest), scaled (a faster one for the "
                              "load), moved (out of a queue it could no longer make it in), best_effort (served late), refused_overload "
                              "(429 on arrival), refused_expired (429: its client deadline had passed, or left less time than any member "
                              "needs at rest, when the server could start on it), refused_deadline (429 from the queue), rejected_sla "
                              "(422: no member could at rest)",
                              ["outcome"], registry=r)
        self.late_stage = Counter("effx_late_stage", "Answers late for their latency bound, by the stage that overran its expectation the "
                                  "most: wait_decode (queues and decoding), inference, handback (batch end to the event loop taking its result), after "
                                  "(from there to the answer serialised)",
                                  ["stage"], registry=r)
        self.expectation_error = Histogram("effx_expectation_error_seconds", "Answered requests with a latency bound: the time from "
                                           "routing to the answer, observed minus expected (negative: sooner), by whether other requests "
                                           "were being served (shared) or not (alone): what an admission must leave as margin",
                                           ["load"], buckets=_ERRORS, registry=r)
        self.decode_wait_error = Histogram("effx_decode_wait_error_seconds", "Decodings: their wait for a lane, observed minus expected "
                                           "when queued (negative: sooner), by whether a lane then took them (ran) or found them too late "
                                           "to make their deadline (late)", ["outcome"], buckets=_ERRORS, registry=r)
        self.gc_pauses = Histogram("effx_gc_pause_seconds", "Garbage collections and how long each held every thread (the collector "
                                   "stops the interpreter), by generation (2: a full pass)", ["generation"], buckets=_SECONDS, registry=r)
        self.queue_depth = Gauge("effx_queue_depth", "Images waiting for a batch, by member", ["member"], registry=r)
        self.expected_ms = Gauge("effx_expected_latency_ms", "Expected end-to-end latency of a new one-image 640x480 JPEG request, by member",
                                 ["member"], registry=r)
        self.correction = Gauge("effx_latency_correction", "A member's own observed / expected batch time beyond the device's (online, decays to 1)",
                                ["member"], registry=r)
        self.contention = Gauge("effx_device_contention", "Observed / profiled batch time over every member on the device (online, decays to 1)",
                                registry=r)
        self.ready = Gauge("effx_ready", "1 when every member is loaded and warm and the backend is healthy", registry=r)

    def time_garbage_collections(self) -> Callable[[str, dict], None]:
        """A `gc.callbacks` entry that observes each collection's pause in `gc_pauses`. It runs in whichever thread
        collects; no two collections overlap, and nothing else writes these series."""
        started = [0.0]

        def callback(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pauses.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        return callback

    def snapshot(self) -> dict:
        """This server's samples as JSON-able data, which a worker publishes for the one that answers a scrape (serve/workers.py):
        its counters and histograms, and its gauges (refreshed first by the caller)."""
        return {"families": {family.name: family.dump() for family in self._families()},
                "gauges": {metric.name: _samples(metric) for metric in self._gauges()}}

    def render(self, peers: Sequence[dict] = (), worker: str = "") -> bytes:
        """The exposition text; with `peers` (other workers' snapshots, each with its `worker` name and whether it is `live`),
        the server's as a whole: counters and histograms summed over every worker that ever ran (so totals never go back
        when one restarts), gauges one series per live worker (label `worker`: `worker` for this one)."""
        if not peers:
            return generate_latest(self.registry)
        return generate_latest(_Merged(self, peers, worker))

    def _families(self) -> list[_Family]:
        return [value for value in vars(self).values() if isinstance(value, _Family)]

    def _gauges(self) -> list[Metric]:
        return [metric for value in vars(self).values() if isinstance(value, Gauge) for metric in value.collect()]


def _samples(gauge: Metric) -> list[list]:
    """A gauge's samples as JSON-able [labels, value] pairs: what a worker publishes of it, and reads back from its peers."""
    return [[sample.labels, sample.value] for sample in gauge.samples]


class _Merged:
    """What `render` exposes for a server of several workers."""

    def __init__(self, metrics: ServerMetrics, peers: Sequence[dict], worker: str) -> None:
        self.metrics, self.peers, self.worker = metrics, peers, worker

    def collect(self) -> Iterator[Metric]:
        for family in self.metrics._families():
            yield from family.merged([peer["families"].get(family.name, []) for peer in self.peers]).collect()
        live = [peer for peer in self.peers if peer["live"]]
        for metric in self.metrics._gauges():
            merged = GaugeMetricFamily(metric.name, metric.documentation)
            for worker, samples in ((self.worker, _samples(metric)),
                                    *((peer["worker"], peer["gauges"].get(metric.name, [])) for peer in live)):
                for labels, value in samples:
                    merged.add_sample(metric.name, {**labels, "worker": worker}, value)
            yield merged
