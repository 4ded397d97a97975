"""Prometheus metrics of one server (a registry per app, so tests and several apps never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 0.25 ms to 10 s: small CPU members answer in about a millisecond.
_SECONDS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 5.0, 10.0)
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


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
                                  "most: wait_decode (queues and decoding), inference, after (batch end to answer serialised)",
                                  ["stage"], registry=r)
        self.queue_depth = Gauge("effx_queue_depth", "Images waiting for a batch, by member", ["member"], registry=r)
        self.expected_ms = Gauge("effx_expected_latency_ms", "Expected end-to-end latency of a new one-image 640x480 JPEG request, by member",
                                 ["member"], registry=r)
        self.correction = Gauge("effx_latency_correction", "A member's own observed / expected batch time beyond the device's (online, decays to 1)",
                                ["member"], registry=r)
        self.contention = Gauge("effx_device_contention", "Observed / profiled batch time over every member on the device (online, decays to 1)",
                                registry=r)
        self.ready = Gauge("effx_ready", "1 when every member is loaded and warm and the backend is healthy", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
