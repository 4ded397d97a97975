"""One classification request, from its images and parameters to its answer, with no transport in it.

SLA and deadline -> route (expected end-to-end latency of every member, serve.dispatch) -> decode (the CPU
scheduler, at the chosen member's resolution) -> run (the device scheduler; moved to a faster member or
refused if it can no longer make its deadline) -> answer, serialised here, so that the time it takes is inside
the bound. The transport reads the body into the `Trace` it passes in (arrival, body read, a client's deadline)
and turns the errors raised here (serve.errors) into its statuses.

The bound (`max_latency_ms`, or a client's absolute deadline if sooner) is end to end in the server: from the
request's arrival to its answer written. A request without one is scheduled as if due `default_deadline_ms`
after it arrived, so it waits behind tighter ones without starving.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import orjson

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.serve.catalog import Member
from effx_serve.serve.dispatch import DeadlineMissed, Dispatcher, Expectation, ImageInfo, Ran, Routed
from effx_serve.serve.errors import InvalidRequest, Overloaded, SlaUnmeetable
from effx_serve.serve.router import Sla
from effx_serve.serve.schema import ClassifyParams, Expected, OptionOut
from effx_serve.serve.server import Server

EXPECTED_FIELDS = tuple(Expected.model_fields)  # decode_ms, wait_ms, inference_ms, after_ms, total_ms
MIN_BOUND_MS = 0.001  # the bound in force for a client deadline that had passed when the request arrived
MAX_DEADLINE_S = 3600.0  # a client deadline further away than this is a mistake (a clock in the wrong unit, say)


@dataclass
class Trace:
    """What is known of a request as it goes: when it arrived and was read, a client's deadline, its SLA class and the
    member it went to (for metrics, whatever the outcome). Times are time.monotonic() seconds."""

    arrival: float
    read: float | None = None  # the body read
    client_deadline: float | None = None  # from the client's absolute deadline, on this clock
    sla: str = "none"
    member: str = "none"


def client_deadline(headers: list[str], arrival: float) -> float:
    """A client's absolute deadline (Unix time in seconds, e.g. `1764505000.125`, its header's one value in `headers`) on the
    monotonic clock, possibly passed already (`_refuse_expired` refuses it once the request is read); InvalidRequest when
    sent more than once, not a number or more than an hour away either side (a clock in the wrong unit, or out of sync)."""
    if len(headers) > 1:  # which one would the client mean? (a proxy adding its own, say)
        raise InvalidRequest(f"the deadline header was sent {len(headers)} times; send it once")
    (header,) = headers
    try:
        epoch = float(header)
    except ValueError:
        raise InvalidRequest(f"the deadline header must be Unix time in seconds, such as {time.time() + 0.05:.3f}; got {header[:40]!r}") from None
    remaining = epoch - time.time()
    if not math.isfinite(remaining) or abs(remaining) > MAX_DEADLINE_S:
        raise InvalidRequest(f"the deadline {header[:40]} is more than {MAX_DEADLINE_S:.0f} s away from the server's clock; send Unix "
                             "time in seconds, from a clock in sync (NTP)")
    return arrival + remaining


def _refuse_expired(server: Server, trace: Trace, sla: Sla) -> None:
    """A request whose client deadline passed before the server could start on it (in transit, or waiting to be read
    in a backlog) is refused at once, neither routed nor decoded: 429 `deadline` (served late if it asked for best_effort)."""
    now = time.monotonic()
    if trace.client_deadline is None or trace.client_deadline > now or sla.on_miss != "reject":
        return
    _count_refused(server, "refused_expired", sla.kind)
    raise DeadlineMissed(f"the deadline passed {1000 * (now - trace.client_deadline):.1f} ms before the server could start on the request "
                         "(in transit, or its backlog); retry with a later deadline", server.dispatcher.retry_after_s())


def refuse_expired(server: Server, trace: Trace, params: ClassifyParams) -> None:
    """`_refuse_expired` before the body is read, for a request whose body cannot change its SLA (no fields in it): an
    expired request then costs neither the read nor the decode."""
    sla = _sla(params, trace)
    try:
        _refuse_expired(server, trace, sla)
    except DeadlineMissed:
        trace.sla = sla.kind
        server.metrics.sla_requests.labels(sla.kind).inc()  # `classify` counts every other request
        raise


def _sla(params: ClassifyParams, trace: Trace) -> Sla:
    """The SLA in force: the request's, with a client deadline as the latency bound when it is the sooner one."""
    bound = params.max_latency_ms
    if trace.client_deadline is not None:
        from_deadline = max(MIN_BOUND_MS, (trace.client_deadline - trace.arrival) * 1000.0)  # passed already: late by any measure
        bound = from_deadline if bound is None else min(bound, from_deadline)
    try:
        return Sla(params.min_accuracy, bound, params.on_miss)
    except UserError as error:
        raise InvalidRequest(str(error)) from None


async def classify(server: Server, images: list[bytes], params: ClassifyParams, batch: bool, trace: Trace) -> bytes:
    """Classify `images` with the member the SLA in `params` routes to (`batch`: several images, one member); the
    answer's JSON."""
    if not batch and len(images) > 1:
        raise InvalidRequest(f"{len(images)} images sent to /v1/classify, which takes one; send several to /v1/classify/batch")
    sla = _sla(params, trace)
    trace.sla = sla.kind
    server.metrics.sla_requests.labels(sla.kind).inc()
    _refuse_expired(server, trace, sla)
    with server.dispatcher.in_use() as dispatcher:  # a repository reloaded meanwhile lets this request finish here
        metrics = server.metrics
        bound_ms = sla.max_latency_ms if sla.max_latency_ms is not None else dispatcher.settings.default_deadline_ms
        deadline = trace.arrival + bound_ms / 1000.0
        infos = [ImageInfo(*preprocess.peek(data)) for data in images]
        routed = dispatcher.route(sla, infos, deadline, trace.arrival, params.family, params.member)
        if routed.member is None:
            _refuse_short_of_time(server, routed, sla, params, trace)
            _refuse(server, routed, sla)
        member = routed.member
        trace.member = member.name
        if params.top_k > len(member.labels):
            raise InvalidRequest(f"top_k is {params.top_k}, but the model has {len(member.labels)} labels; ask for at most {len(member.labels)}")
        routed_at = time.monotonic()
        try:
            bound, faster = sla.max_latency_ms is not None, _faster(dispatcher, routed, sla, params)
            prepared = await dispatcher.decode(images, infos, member, deadline, hard=bound and sla.on_miss == "reject", run_hard=bound,
                                               alternatives=faster)
            decoded = prepared.at
            if prepared.member is not member:  # no lane could start it in time for its member: decoded for a faster one
                faster = faster[faster.index(prepared.member) + 1:]
            ran = await dispatcher.run(prepared.member, prepared.inputs, deadline, sla, prepared.pictures, faster, prepared.batch)
            if prepared.member is not member and ran.route_change is None:
                ran = dataclasses.replace(ran, route_change="moved")
        except DeadlineMissed:
            _count_refused(server, "refused_deadline", sla.kind)
            dispatcher.observe_outcome(met=False)
            raise
        inference_done = time.monotonic()
        trace.member = ran.member.name
        handback_ms = _handback_ms(ran, decoded, inference_done)
        body, report = _answer(ran, routed, sla, params.top_k, trace, (routed_at, decoded, inference_done), handback_ms, batch)
        answered = time.monotonic()
        dispatcher.observe_answer(routed, trace.arrival, routed_at, handback_ms, inference_done, answered)
        if sla.max_latency_ms is not None:
            dispatcher.observe_outcome(met="latency" not in report["misses"])
            if "latency" in report["misses"] and routed.expected is not None:
                metrics.late_stage.labels(_overran(routed.expected, ran, routed_at, decoded, handback_ms, inference_done, answered)).inc()
        metrics.routes.labels(report["route"]).inc()
        for result in ran.results:
            metrics.queue_seconds.labels(ran.member.name).observe(result.queue_ms / 1000.0)
        metrics.images.labels(ran.member.name).inc(len(ran.results))
        for cause in report["misses"]:
            metrics.sla_misses.labels(sla.kind, cause).inc()
        return body


def _handback_ms(ran: Ran, decoded: float, inference_done: float) -> float:
    """From the batch's end in its lane to the event loop taking its result up (the loop's backlog): what the time from the
    decoding's end to the result in hand holds beyond the batch's queue and run."""
    return (inference_done - decoded) * 1000.0 - ran.queue_ms - ran.inference_ms


def _overran(expected: Expectation, ran: Ran, routed_at: float, decoded: float, handback_ms: float, inference_done: float,
             answered: float) -> str:
    """Where a late answer lost the most time against its expectation: `wait_decode` (the CPU and device queues and the
    decoding), `inference` (the batch), `handback` (`_handback_ms`) or `after` (from there to the answer serialised)."""
    overruns = {"wait_decode": (decoded - routed_at) * 1000.0 + ran.queue_ms - expected.wait_ms - expected.decode_ms,
                "inference": ran.inference_ms - expected.inference_ms,
                "handback": handback_ms - expected.handback_ms,
                "after": (answered - inference_done) * 1000.0 - (expected.after_ms - expected.handback_ms)}
    return max(overruns, key=overruns.__getitem__)


def _count_refused(server: Server, outcome: str, sla_kind: str) -> None:
    server.metrics.routes.labels(outcome).inc()
    server.metrics.sla_misses.labels(sla_kind, "refused").inc()


def _refuse_short_of_time(server: Server, routed: Routed, sla: Sla, params: ClassifyParams, trace: Trace) -> None:
    """A request that no member can make even at rest only because its client deadline left it less time than its own bound
    (that time went in transit or waiting in the server's backlog: the load's doing) is refused as one whose deadline ran
    out, 429 `deadline` with Retry-After, not 422: a 422 would tell its client to relax an SLA that is fine at rest."""
    if routed.route != "sla" or trace.client_deadline is None or sla.on_miss != "reject":
        return
    left_ms = (trace.client_deadline - trace.arrival) * 1000.0
    own_ms = params.max_latency_ms
    if own_ms is not None and own_ms <= left_ms:  # the deadline did not shorten the bound: the request's own SLA is the cause
        return
    at_rest_ms = min((o.expected_ms for o in routed.at_rest if sla.accuracy_ok(o.accuracy)), default=math.inf)
    if own_ms is not None and at_rest_ms > own_ms:  # not even its own bound could be met at rest: a 422 says so
        return
    _count_refused(server, "refused_expired", sla.kind)
    raise DeadlineMissed(f"{max(0.0, left_ms):.1f} ms were left of the client deadline when the server could start on the request, less "
                         f"than any member needs at rest ({at_rest_ms:.1f} ms); retry with a later deadline", server.dispatcher.retry_after_s())


def _refuse(server: Server, routed: Routed, sla: Sla) -> None:
    metrics = server.metrics
    if routed.route == "overload":
        _count_refused(server, "refused_overload", sla.kind)
        raise Overloaded(f"no member can answer within max_latency_ms {sla.max_latency_ms:g} under the current load (at rest one could); "
                         "retry, relax the bound, or send on_miss=best_effort", server.dispatcher.retry_after_s(), "overload")
    metrics.routes.labels("rejected_sla").inc()
    metrics.sla_misses.labels(sla.kind, "rejected").inc()
    options = [OptionOut(member=o.name, accuracy=o.accuracy, expected_latency_ms=o.expected_ms,
                         misses=_misses(o.accuracy, o.expected_ms, sla)).model_dump() for o in routed.decision.nearest[:3]]
    raise SlaUnmeetable(f"no member can meet the SLA ({_describe(sla)}); the nearest options follow; relax the SLA, "
                        "or send on_miss=best_effort to be served by the nearest", options)


def _faster(dispatcher: Dispatcher, routed: Routed, sla: Sla, params: ClassifyParams) -> list[Member]:
    """Where a request may move if it can no longer make its deadline: the faster members of its family that meet its
    accuracy floor, most accurate first (none for a request that pinned its member)."""
    if params.member is not None or sla.max_latency_ms is None:
        return []
    expected = {o.name: o.expected_ms for o in routed.options}
    chosen = expected[routed.member.name]
    faster = [dispatcher.catalog.members[name] for name, ms in expected.items() if ms < chosen and name != routed.member.name]
    return sorted((m for m in faster if sla.accuracy_ok(m.accuracy)), key=lambda m: (-m.accuracy, m.name))


def _misses(member_accuracy: float, latency_ms: float, sla: Sla) -> list[str]:
    return [name for name, ok in (("accuracy", sla.accuracy_ok(member_accuracy)), ("latency", sla.latency_ok(latency_ms))) if not ok]


def _describe(sla: Sla) -> str:
    parts = []
    if sla.min_accuracy is not None:
        parts.append(f"min_accuracy {sla.min_accuracy:g}")
    if sla.max_latency_ms is not None:
        parts.append(f"max_latency_ms {sla.max_latency_ms:g}")
    return ", ".join(parts) or "none"


SMALL_OUTPUT = 64  # labels up to which plain Python scores faster than numpy, whose fixed cost per call is paid ten times over


def _predictions(logits: np.ndarray, labels: tuple[str, ...], top_k: int) -> list[dict]:
    """The top_k labels by softmax probability (float64, ties in label order), as the answer's `predictions`
    (schema.Prediction). This runs on the event loop once per image; for a few labels Python beats numpy (docs/serving-measurements.md)."""
    if len(logits) <= SMALL_OUTPUT:
        values = logits.tolist()
        peak = max(values)
        scores = [math.exp(v - peak) for v in values]
        total = math.fsum(scores)
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:top_k]  # stable: ties keep label order
        return [{"label": labels[i], "index": i, "score": scores[i] / total} for i in order]
    shifted = np.exp(logits.astype(np.float64) - np.max(logits))
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities, kind="stable")[:top_k].tolist()
    return [{"label": labels[i], "index": i, "score": float(probabilities[i])} for i in order]


def _answer(ran: Ran, routed: Routed, sla: Sla, top_k: int, trace: Trace, stamps: tuple[float, float, float], handback_ms: float,
            batch: bool) -> tuple[bytes, dict]:
    """The answer's JSON (schema.Classification or BatchClassification) and its SLA report (schema.SlaReport), judged
    on the whole time in the server, its own serialisation included: everything but the timing and the SLA report is
    serialised first, then those few fields. Plain dicts and orjson: pydantic models, or the standard library's json, cost
    several (ten) times more per answer on the event loop; the schema classes stay the documented contract (tests check
    answers against them). A float that is not finite (no model output gives one) would be written null."""
    member, results, expected = ran.member, ran.results, routed.expected
    parts = (expected.decode_ms, expected.wait_ms, expected.inference_ms, expected.after_ms, expected.total_ms) if expected else (0.0,) * 5
    head = {"member": member.name, "family": member.family, "accuracy": member.accuracy, "expected_latency_ms": parts[-1],
            "latency_provenance": member.latency.describe(), "expected": dict(zip(EXPECTED_FIELDS, parts, strict=True))}
    if batch:
        head["results"] = [{"predictions": _predictions(r.output, member.labels, top_k), "observed_latency_ms": r.queue_ms + r.inference_ms,
                            "batch_size": r.batch_size} for r in results]
    else:
        (result,) = results
        head |= {"predictions": _predictions(result.output, member.labels, top_k), "batch_size": result.batch_size}
    text = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    finished = time.monotonic()
    total_ms = (finished - trace.arrival) * 1000.0
    misses = _misses(member.accuracy, total_ms, sla)
    report = {"kind": sla.kind, "min_accuracy": sla.min_accuracy, "max_latency_ms": sla.max_latency_ms,
              "expected_to_meet": ran.route_change is None and routed.decision.expected_to_meet, "met": not misses, "misses": misses,
              "route": ran.route_change or routed.route}
    routed_at, decoded, inference_done = stamps
    read = trace.read or routed_at
    timing = {"read_ms": (read - trace.arrival) * 1000.0, "route_ms": (routed_at - read) * 1000.0, "decode_ms": (decoded - routed_at) * 1000.0,
              "queue_ms": ran.queue_ms, "inference_ms": ran.inference_ms, "handback_ms": handback_ms,
              "serialize_ms": (finished - inference_done) * 1000.0, "total_ms": total_ms}
    tail = orjson.dumps({"observed_latency_ms": total_ms, "sla": report, "timing": timing}, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join((text[:-1], b",", tail[1:])), report
