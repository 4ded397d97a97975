"""One classification request, from its images and parameters to its answer, with no transport in it.

SLA (checked) -> route (the dispatcher's expected latencies) -> decode (the server's decode pool, at the chosen
member's resolution) -> dispatch (the member's batcher and backend) -> answer (predictions, timing parts, whether
the SLA was met). The HTTP edge reads bodies and turns the errors raised here (serve.errors) into statuses; the
`Trace` it passes in tells it, whatever the outcome, which member the request went to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.serve.batcher import ItemResult
from effx_serve.serve.catalog import Member
from effx_serve.serve.errors import InvalidRequest, SlaUnmeetable, UnreadableImage
from effx_serve.serve.router import Sla
from effx_serve.serve.schema import (
    BatchClassification,
    Classification,
    ClassifyParams,
    ImageResult,
    OptionOut,
    Prediction,
    SlaReport,
    Timing,
)
from effx_serve.serve.server import Server


@dataclass
class Trace:
    """What is known of a request as it goes: when it arrived, its SLA class, the member it went to (for metrics)."""

    started: float  # time.perf_counter() when the request arrived
    sla: str = "none"
    member: str = "none"


async def classify(server: Server, images: list[bytes], params: ClassifyParams, batch: bool, trace: Trace) -> Classification | BatchClassification:
    """Classify `images` with the member the SLA in `params` routes to (`batch`: several images, one member)."""
    if not batch and len(images) > 1:
        raise InvalidRequest(f"{len(images)} images sent to /v1/classify, which takes one; send several to /v1/classify/batch")
    try:
        sla = Sla(params.min_accuracy, params.max_latency_ms, params.on_miss)
    except UserError as error:
        raise InvalidRequest(str(error)) from None
    trace.sla = sla.kind
    metrics = server.metrics
    metrics.sla_requests.labels(sla.kind).inc()
    routed = server.dispatcher.route(sla, params.family, params.member, len(images))
    if routed.member is None:
        metrics.sla_misses.labels(sla.kind, "rejected").inc()
        options = [OptionOut(member=o.name, accuracy=o.accuracy, expected_latency_ms=o.expected_ms,
                             misses=_misses(o.accuracy, o.expected_ms, sla)).model_dump() for o in routed.decision.nearest[:3]]
        raise SlaUnmeetable(f"no member can meet the SLA ({_describe(sla)}); the nearest options follow; relax the SLA, "
                            "or send on_miss=best_effort to be served by the nearest", options)
    member = routed.member
    trace.member = member.name
    if params.top_k > len(member.labels):
        raise InvalidRequest(f"top_k is {params.top_k}, but the model has {len(member.labels)} labels; ask for at most {len(member.labels)}")
    decode_started = time.perf_counter()
    inputs = await _decode_all(server, images, member)
    decode_ms = (time.perf_counter() - decode_started) * 1000.0
    results = await server.dispatcher.run(member, inputs)
    answer = _answer(member, routed.expected_ms, routed.decision.expected_to_meet, sla, params.top_k, results, decode_ms, trace.started, batch)
    for result in results:
        metrics.queue_seconds.labels(member.name).observe(result.queue_ms / 1000.0)
    metrics.images.labels(member.name).inc(len(results))
    for cause in answer.sla.misses:
        metrics.sla_misses.labels(sla.kind, cause).inc()
    return answer


async def _decode_all(server: Server, images: list[bytes], member: Member) -> list[np.ndarray]:
    """Every image decoded to the member's input, in the decode pool; the first unreadable one is the error."""
    settings = server.settings
    loop = asyncio.get_running_loop()
    jobs = [loop.run_in_executor(server.decoder, preprocess.serving_input, data, member.resolution, settings.max_pixels, settings.formats,
                                 settings.min_side) for data in images]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, UserError):
            raise UnreadableImage(f"image {index}: {result}" if len(images) > 1 else str(result))
        if isinstance(result, BaseException):
            raise result
    return results


def _misses(member_accuracy: float, latency_ms: float, sla: Sla) -> list[str]:
    return [name for name, ok in (("accuracy", sla.accuracy_ok(member_accuracy)), ("latency", sla.latency_ok(latency_ms))) if not ok]


def _describe(sla: Sla) -> str:
    parts = []
    if sla.min_accuracy is not None:
        parts.append(f"min_accuracy {sla.min_accuracy:g}")
    if sla.max_latency_ms is not None:
        parts.append(f"max_latency_ms {sla.max_latency_ms:g}")
    return ", ".join(parts) or "none"


def _predictions(logits: np.ndarray, labels: tuple[str, ...], top_k: int) -> list[Prediction]:
    shifted = logits.astype(np.float64) - np.max(logits)
    probabilities = np.exp(shifted) / np.sum(np.exp(shifted))
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [Prediction(label=labels[i], index=int(i), score=float(probabilities[i])) for i in order]


def _answer(member: Member, expected_ms: float | None, expected_to_meet: bool, sla: Sla, top_k: int, results: list[ItemResult],
            decode_ms: float, started: float, batch: bool) -> Classification | BatchClassification:
    observed = max(r.queue_ms + r.inference_ms for r in results)
    misses = _misses(member.accuracy, observed, sla)
    report = SlaReport(kind=sla.kind, min_accuracy=sla.min_accuracy, max_latency_ms=sla.max_latency_ms, expected_to_meet=expected_to_meet,
                       met=not misses, misses=misses)
    timing = Timing(decode_ms=decode_ms, queue_ms=max(r.queue_ms for r in results), inference_ms=max(r.inference_ms for r in results),
                    total_ms=(time.perf_counter() - started) * 1000.0)
    common = {"member": member.name, "family": member.family, "accuracy": member.accuracy, "expected_latency_ms": expected_ms or 0.0,
              "latency_provenance": member.latency.describe(), "sla": report, "observed_latency_ms": observed, "timing": timing}
    if not batch:
        (result,) = results
        return Classification(**common, predictions=_predictions(result.output, member.labels, top_k), batch_size=result.batch_size)
    items = [ImageResult(predictions=_predictions(r.output, member.labels, top_k), observed_latency_ms=r.queue_ms + r.inference_ms,
                         batch_size=r.batch_size) for r in results]
    return BatchClassification(**common, results=items)
