"""The HTTP API: FastAPI routes over a Server (routing, batching and backends live there).

Every error a client can cause is a 4xx whose `detail` names the cause: 400 unreadable image or body,
404 unknown family or member, 413 too large, 415 wrong Content-Type, 422 bad parameter or an SLA no
member can meet (with the nearest options), 429 queue full and 503 not ready or backend down (both
with Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from effx_serve.core import preprocess
from effx_serve.core.errors import UserError
from effx_serve.serve.backends.base import BackendUnavailable
from effx_serve.serve.batcher import BatcherClosed, ItemResult, QueueFull
from effx_serve.serve.catalog import Member, UnknownName
from effx_serve.serve.http.body import RequestProblem, read_images
from effx_serve.serve.http.models import (
    BatchClassification,
    Classification,
    ClassifyParams,
    ImageResult,
    MemberOut,
    ModelsOut,
    OptionOut,
    Prediction,
    Problem,
    Rejection,
    SlaReport,
    Timing,
)
from effx_serve.serve.router import Sla
from effx_serve.serve.server import Server

log = logging.getLogger(__name__)

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    **{kind: _IMAGE_BODY for kind in ("image/jpeg", "image/png", "image/webp")},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "byte"},
                                                                      "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
}}}
_ERRORS = {status: {"model": Problem} for status in (400, 404, 413, 415, 429, 503)} | {422: {"model": Rejection}}


def _misses(member_accuracy: float, latency_ms: float, sla: Sla) -> list[str]:
    return [name for name, ok in (("accuracy", sla.accuracy_ok(member_accuracy)), ("latency", sla.latency_ok(latency_ms))) if not ok]


def _first_error(errors: list[dict]) -> str:
    """A validation failure in one readable line: where (the field, without 'query' or 'body') and why."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"] if part not in ("query", "body")) or "request"
    return f"{where}: {first['msg']}"


def _params(query: ClassifyParams, fields: dict) -> ClassifyParams:
    if not fields:
        return query
    try:
        return ClassifyParams.model_validate({**query.model_dump(exclude_unset=True), **fields})
    except ValidationError as error:
        raise RequestProblem(422, _first_error(error.errors())) from None


def _predictions(logits: np.ndarray, labels: tuple[str, ...], top_k: int) -> list[Prediction]:
    shifted = logits.astype(np.float64) - np.max(logits)
    probabilities = np.exp(shifted) / np.sum(np.exp(shifted))
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    return [Prediction(label=labels[i], index=int(i), score=float(probabilities[i])) for i in order]


def create_app(server: Server) -> FastAPI:
    settings = server.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.open()
        try:
            yield
        finally:
            await server.close()

    app = FastAPI(title="effx-serve", version="0.1.0", lifespan=lifespan,
                  description="Image classification routed per request to the fastest EfficientNet-X family member that meets its SLA.")
    app.state.server = server

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        # One readable line first (like every other 4xx here), FastAPI's structured list beside it.
        if request.url.path.startswith("/v1/classify"):
            endpoint = "batch" if request.url.path.endswith("/batch") else "classify"
            server.metrics.requests.labels("none", endpoint, "422").inc()
        return JSONResponse({"detail": _first_error(error.errors()), "errors": jsonable_encoder(error.errors())}, 422)

    async def decode_all(images: list[bytes], member: Member) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(server.decoder, preprocess.serving_input, data, member.resolution, settings.max_pixels, settings.formats,
                                     settings.min_side) for data in images]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, UserError):
                where = f"image {index}: " if len(images) > 1 else ""
                raise RequestProblem(400, f"{where}{result}")
            if isinstance(result, BaseException):
                raise result
        return results

    async def serve(request: Request, query: ClassifyParams, endpoint: str, max_images: int):
        started = time.perf_counter()
        member_label, sla_kind = "none", "none"
        server.in_flight += 1
        try:
            if server.in_flight > settings.max_in_flight:
                raise RequestProblem(429, f"the server is handling {settings.max_in_flight} requests, its limit; retry shortly",
                                     headers={"Retry-After": "1"})
            body = await read_images(request, settings.max_body_bytes, settings.max_images)
            if len(body.images) > max_images:
                raise RequestProblem(422, f"{len(body.images)} images sent to /v1/classify, which takes one; send several to /v1/classify/batch")
            params = _params(query, body.fields)
            try:
                sla = Sla(params.min_accuracy, params.max_latency_ms, params.on_miss)
            except UserError as error:
                raise RequestProblem(422, str(error)) from None
            sla_kind = sla.kind
            server.metrics.sla_requests.labels(sla_kind).inc()
            routed = server.dispatcher.route(sla, params.family, params.member, len(body.images))
            if routed.member is None:
                server.metrics.sla_misses.labels(sla_kind, "rejected").inc()
                options = [OptionOut(member=o.name, accuracy=o.accuracy, expected_latency_ms=o.expected_ms,
                                     misses=_misses(o.accuracy, o.expected_ms, sla)).model_dump() for o in routed.decision.nearest[:3]]
                raise RequestProblem(422, f"no member can meet the SLA ({_describe(sla)}); the nearest options follow; relax the SLA, "
                                   "or send on_miss=best_effort to be served by the nearest", extra={"options": options})
            member = routed.member
            member_label = member.name
            if params.top_k > len(member.labels):
                raise RequestProblem(422, f"top_k is {params.top_k}, but the model has {len(member.labels)} labels; ask for at most {len(member.labels)}")
            decode_started = time.perf_counter()
            inputs = await decode_all(body.images, member)
            decode_ms = (time.perf_counter() - decode_started) * 1000.0
            results = await server.dispatcher.run(member, inputs)
            answer = _answer(member, routed.expected_ms, routed.decision.expected_to_meet, sla, params.top_k, results, decode_ms, started, endpoint)
            for result in results:
                server.metrics.queue_seconds.labels(member.name).observe(result.queue_ms / 1000.0)
            server.metrics.images.labels(member.name).inc(len(results))
            if not answer.sla.met:
                for cause in answer.sla.misses:
                    server.metrics.sla_misses.labels(sla_kind, cause).inc()
            # Serialised here, once: returning the model would make FastAPI validate it again (a tenth of a millisecond).
            status, response = 200, Response(answer.model_dump_json(), media_type="application/json")
        except RequestProblem as problem:
            status, response = problem.status, problem.response()
        except UnknownName as error:
            status, response = 404, JSONResponse({"detail": str(error)}, 404)
        except QueueFull as full:
            status, response = 429, JSONResponse({"detail": str(full)}, 429, headers={"Retry-After": str(math.ceil(full.retry_after_s))})
        except (BackendUnavailable, BatcherClosed) as error:
            status, response = 503, JSONResponse({"detail": f"cannot serve now: {error}"}, 503, headers={"Retry-After": "1"})
        finally:
            server.in_flight -= 1
        server.metrics.requests.labels(member_label, endpoint, str(status)).inc()
        server.metrics.request_seconds.labels(member_label).observe(time.perf_counter() - started)
        return response

    @app.post("/v1/classify", response_model=Classification, responses=_ERRORS, openapi_extra=_REQUEST_BODY,
              summary="Classify one image with the fastest member that meets the SLA")
    async def classify(request: Request, query: Annotated[ClassifyParams, Query()]):
        return await serve(request, query, "classify", 1)

    @app.post("/v1/classify/batch", response_model=BatchClassification, responses=_ERRORS, openapi_extra=_REQUEST_BODY,
              summary="Classify several images (multipart files or a JSON list) with one SLA and one member")
    async def classify_batch(request: Request, query: Annotated[ClassifyParams, Query()]):
        return await serve(request, query, "batch", settings.max_images)

    @app.get("/v1/models", response_model=ModelsOut, summary="Members with accuracy and latency on this hardware, with provenance")
    async def models() -> ModelsOut:
        dispatcher = server.dispatcher
        members = [MemberOut(name=m.name, family=m.family, accuracy=m.accuracy, accuracy_provenance=m.accuracy_provenance,
                             resolution=m.resolution, params=m.params, macs=m.macs, max_batch=m.max_batch,
                             latency_hardware=m.latency.hardware_id, latency_runtime=m.latency.runtime,
                             latency_provenance=m.latency.provenance, latency_on_this_hardware=m.latency.matches_hardware,
                             profile=[{"batch": b, "p50_ms": t} for b, t in m.latency.p50_ms], correction=dispatcher.tracker.factor(m.name),
                             expected_latency_ms=dispatcher.expected_ms(m), queued=dispatcher.batchers[m.name].queued if m.name in dispatcher.batchers else 0)
                   for m in server.catalog.members.values()]
        return ModelsOut(default_family=server.catalog.family, families={k: list(v) for k, v in server.catalog.families.items()}, members=members)

    @app.get("/v1/hardware", summary="The detected hardware, the backend and where the latency figures come from")
    async def hardware() -> dict:
        return {"hardware": server.hardware.to_dict(), "backend": server.backend.describe(), "family": server.catalog.family,
                "latency": {m.name: m.latency.describe() for m in server.catalog.members.values()}, "notes": list(server.notes)}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "live"}

    @app.get("/readyz", summary="Readiness: every member loaded and warm, the backend healthy", responses={503: {"model": Problem}})
    async def readyz():
        problem = server.problem()
        if problem is not None:
            return JSONResponse({"detail": problem}, 503, headers={"Retry-After": "1"})
        return {"status": "ready", "members": len(server.catalog.members)}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        server.dispatcher.refresh_gauges()
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    return app


def _describe(sla: Sla) -> str:
    parts = []
    if sla.min_accuracy is not None:
        parts.append(f"min_accuracy {sla.min_accuracy:g}")
    if sla.max_latency_ms is not None:
        parts.append(f"max_latency_ms {sla.max_latency_ms:g}")
    return ", ".join(parts) or "none"


def _answer(member: Member, expected_ms: float | None, expected_to_meet: bool, sla: Sla, top_k: int, results: list[ItemResult],
            decode_ms: float, started: float, endpoint: str):
    observed = max(r.queue_ms + r.inference_ms for r in results)
    misses = _misses(member.accuracy, observed, sla)
    report = SlaReport(kind=sla.kind, min_accuracy=sla.min_accuracy, max_latency_ms=sla.max_latency_ms, expected_to_meet=expected_to_meet,
                       met=not misses, misses=misses)
    timing = Timing(decode_ms=decode_ms, queue_ms=max(r.queue_ms for r in results), inference_ms=max(r.inference_ms for r in results),
                    total_ms=(time.perf_counter() - started) * 1000.0)
    common = {"member": member.name, "family": member.family, "accuracy": member.accuracy, "expected_latency_ms": expected_ms or 0.0,
              "latency_provenance": member.latency.describe(), "sla": report, "observed_latency_ms": observed, "timing": timing}
    if endpoint == "classify":
        (result,) = results
        return Classification(**common, predictions=_predictions(result.output, member.labels, top_k), batch_size=result.batch_size)
    items = [ImageResult(predictions=_predictions(r.output, member.labels, top_k), observed_latency_ms=r.queue_ms + r.inference_ms,
                         batch_size=r.batch_size) for r in results]
    return BatchClassification(**common, results=items)

