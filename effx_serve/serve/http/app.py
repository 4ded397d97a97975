"""The HTTP API: FastAPI routes over a Server. A classify request is read here (body, parameters, the client's
deadline header), served by the request flow (serve.flow) and answered here; http/errors.py says what each
failure answers. A request's clock starts when the server has its headers (before parameters are parsed)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect

from effx_serve import __version__
from effx_serve.core.wire import DEADLINE_HEADER
from effx_serve.serve import flow
from effx_serve.serve.errors import Overloaded, SlaUnmeetable
from effx_serve.serve.http import errors
from effx_serve.serve.http.body import BodyBudget, may_carry_fields, read_images, with_body_fields
from effx_serve.serve.schema import (
    BatchClassification,
    Classification,
    ClassifyParams,
    MemberOut,
    ModelsOut,
    Problem,
    Refusal,
    Rejection,
)
from effx_serve.serve.server import Server
from effx_serve.serve.workers import WorkerLink

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    **{kind: _IMAGE_BODY for kind in ("image/jpeg", "image/png", "image/webp")},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "byte"},
                                                                      "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
}}}
# The parameters are parsed in `query_params` (FastAPI's Query-model dependency costs ~0.4 ms of the event loop per
# request), so the schema lists them here, from the same model.
_PARAMETERS = {"parameters": [{"name": name, "in": "query", "required": False, "schema": schema, "description": schema.get("description", "")}
                              for name, schema in ClassifyParams.model_json_schema()["properties"].items()]}
_ERRORS = {status: {"model": Problem} for status in (400, 404, 413, 415, 503)} | {422: {"model": Rejection}, 429: {"model": Refusal}}
WORKER_START_S = 120.0  # the longest a worker keeps its members' loading from the port (then it answers 503s while they load)
CLIENT_GONE = 499  # as nginx counts a request whose client closed the connection first (never sent: nobody is there)
log = logging.getLogger(__name__)


class ArrivalClock:
    """Stamps each HTTP request's arrival into its scope, before routing and parameter parsing take any time."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrival"] = time.monotonic()
        await self.app(scope, receive, send)


class ClassifyRoutes:
    """POST /v1/classify and /v1/classify/batch straight to their handler, ahead of every middleware of FastAPI's (error
    pages, telemetry, body limit, exceptions) and its router and dependency solving: their cost per request is
    event-loop time every request waits for (docs/serving-measurements.md, the benchmark). The two routes stay declared on the app
    for the OpenAPI schema; any other method or path goes on to FastAPI. An error nothing else handled is logged and
    answered 500, as FastAPI's outermost middleware would."""

    PATHS = {"/v1/classify": "classify", "/v1/classify/batch": "batch"}

    def __init__(self, app, serve, invalid_parameter) -> None:
        self.app, self.serve, self.invalid_parameter = app, serve, invalid_parameter

    async def __call__(self, scope, receive, send) -> None:
        endpoint = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            root = scope.get("root_path", "")
            endpoint = self.PATHS.get(path[len(root):] if root and path.startswith(root) else path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.serve(request, endpoint)
        except RequestValidationError as error:
            response = await self.invalid_parameter(request, error)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = JSONResponse({"detail": "the server failed on this request (a bug: its log says where); retry, or report it"}, 500)
        await response(scope, receive, send)


class ServingApp(FastAPI):
    """FastAPI whose outermost layers are the arrival clock and the classify routes, given as `outermost(stack)`."""

    def __init__(self, outermost, **kwargs) -> None:
        super().__init__(**kwargs)
        self.outermost = outermost

    def build_middleware_stack(self):
        return self.outermost(super().build_middleware_stack())


async def _cancel_when_gone(request: Request, handler: asyncio.Task, answered: list) -> None:
    """Cancel `handler` (a request being served, its body read) if its client disconnects before the answer: its
    queued work is dropped and its decoding stops, instead of running for nobody."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    if not answered:
        handler.cancel()


def _refusal_reason(error: Exception) -> str | None:
    """Why a request was refused for its SLA or the load (`sla`, or an Overloaded reason); None for any other error."""
    if isinstance(error, SlaUnmeetable):
        return "sla"
    return error.reason if isinstance(error, Overloaded) else None


def query_params(request: Request) -> ClassifyParams:
    """The query string's parameters (the last value of a repeated one); RequestValidationError as FastAPI raises it."""
    query = request.scope["query_string"]
    return _remembered_query(query) if len(query) <= MAX_REMEMBERED_QUERY else _parsed_query(query)


MAX_REMEMBERED_QUERY = 512  # bytes: the cache below holds at most 1,024 of them, whatever the clients send


def _parsed_query(query: bytes) -> ClassifyParams:
    try:
        return ClassifyParams.model_validate(dict(QueryParams(query)))
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in error.errors()]) from None


# Clients send the same few query strings again and again, and each parse is a pydantic validation on the event loop.
# Nothing changes a ClassifyParams once made (frozen; body fields make a new one), so one may serve many; errors are not kept.
_remembered_query = functools.lru_cache(maxsize=1024)(_parsed_query)


def create_app(server: Server, worker: WorkerLink | None = None) -> FastAPI:
    """The app over `server`; `worker`: one of several processes on its port (serve/workers.py), whose /metrics counts them all."""
    settings = server.settings

    def snapshot() -> dict:
        server.dispatcher.refresh_gauges()
        return server.metrics.snapshot()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.open()
        publishing = None
        if worker is not None:  # a worker takes connections from the shared port once it can serve them; the others serve meanwhile
            await server.started(WORKER_START_S)
            if server.lasting_failure is None:  # else it stops before its first heartbeat, and so does the supervisor
                publishing = asyncio.create_task(worker.run(snapshot))
        try:
            yield
        finally:
            if publishing is not None:
                publishing.cancel()
            await server.close()

    app = ServingApp(lambda stack: ArrivalClock(ClassifyRoutes(stack, serve, invalid_parameter)), title="effx-serve",
                     version=__version__, lifespan=lifespan,
                     description="Image classification routed per request to the fastest EfficientNet-X family member that meets its SLA.")
    app.state.server = server
    bodies = BodyBudget(settings.max_bodies_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        # One readable line first (like every other 4xx here), FastAPI's structured list beside it.
        if request.url.path.startswith("/v1/classify"):
            endpoint = "batch" if request.url.path.endswith("/batch") else "classify"
            server.metrics.requests.labels("none", endpoint, "422").inc()
        return JSONResponse({"detail": errors.first_error(error.errors()), "errors": jsonable_encoder(error.errors())}, 422)

    async def serve(request: Request, endpoint: str) -> Response:
        trace = flow.Trace(arrival=request.scope.get("state", {}).get("arrival") or time.monotonic())
        query = query_params(request)
        admitted, held, watcher, answered, refused = False, 0, None, [], None
        try:
            deadline = request.headers.get(DEADLINE_HEADER)
            if deadline is not None:
                trace.client_deadline = flow.client_deadline(request.headers.getlist(DEADLINE_HEADER), trace.arrival)
                if not may_carry_fields(request):  # nothing in the body can change the SLA: refuse before reading it
                    flow.refuse_expired(server, trace, query)
            # A request counts against the in-flight limit once its body has arrived, so uploads that stall cannot
            # lock others out; until then it holds only the bytes it sent (of the bodies' budget), for at most body_timeout_s.
            try:
                async with asyncio.timeout(settings.body_timeout_s):
                    body = await read_images(request, settings.max_body_bytes, settings.max_images, bodies)
            except TimeoutError:
                raise errors.RequestProblem(408, f"the body did not arrive within {settings.body_timeout_s:g} s; send it in one go") from None
            held = body.held
            server.in_flight += 1
            admitted = True
            if server.in_flight > settings.max_in_flight:
                raise Overloaded(f"the server is handling {settings.max_in_flight} requests, its limit; retry shortly")
            params = with_body_fields(query, body.fields)
            trace.read = time.monotonic()
            handler = asyncio.current_task()
            watcher = asyncio.create_task(_cancel_when_gone(request, handler, answered))
            try:
                # The flow serialises the answer itself (its time counts against the bound); FastAPI must not do it again.
                answer = await flow.classify(server, body.images, params, endpoint == "batch", trace)
            except asyncio.CancelledError:
                if not watcher.done() or handler.uncancel() > 0:
                    raise  # cancelled for another reason (the server shutting down)
                raise ClientDisconnect() from None
            answered.append(True)  # from here on a disconnect cancels nothing
            status, response = 200, Response(answer, media_type="application/json")
        except errors.HANDLED as error:
            response = errors.response(error)
            status, refused = response.status_code, _refusal_reason(error)
        except ClientDisconnect:  # gone before its answer: nobody reads it; counted, one line at debug level
            log.debug("%s %s: the client went away before its answer", request.method, request.url.path)
            response, status = Response(status_code=CLIENT_GONE), CLIENT_GONE
        finally:
            answered.append(True)
            if watcher is not None:
                watcher.cancel()
            bodies.give(held)
            if admitted:
                server.in_flight -= 1
        server.metrics.requests.labels(trace.member, endpoint, str(status)).inc()
        elapsed = time.monotonic() - trace.arrival
        server.metrics.request_seconds.labels(trace.member).observe(elapsed)
        if refused is not None:
            server.metrics.refusal_seconds.labels(refused).observe(elapsed)
        return response

    @app.post("/v1/classify", response_model=Classification, responses=_ERRORS, openapi_extra=_REQUEST_BODY | _PARAMETERS,
              summary="Classify one image with the fastest member that meets the SLA")
    async def classify(request: Request):
        return await serve(request, "classify")

    @app.post("/v1/classify/batch", response_model=BatchClassification, responses=_ERRORS, openapi_extra=_REQUEST_BODY | _PARAMETERS,
              summary="Classify several images (multipart files or a JSON list) with one SLA and one member")
    async def classify_batch(request: Request):
        return await serve(request, "batch")

    @app.get("/v1/models", response_model=ModelsOut, summary="Members with accuracy and latency on this hardware, with provenance")
    async def models() -> ModelsOut:
        dispatcher = server.dispatcher
        members = [MemberOut(name=m.name, family=m.family, accuracy=m.accuracy, accuracy_provenance=m.accuracy_provenance,
                             resolution=m.resolution, params=m.params, macs=m.macs, max_batch=m.max_batch,
                             latency_hardware=m.latency.hardware_id, latency_runtime=m.latency.runtime,
                             latency_provenance=m.latency.provenance, latency_on_this_hardware=m.latency.matches_hardware,
                             profile=[{"batch": b, "p50_ms": t} for b, t in m.latency.p50_ms], correction=dispatcher.residual.factor(m.name),
                             expected_latency_ms=dispatcher.expected_now_ms(m), queued=dispatcher.queued(m.name))
                   for m in server.catalog.members.values()]
        return ModelsOut(default_family=server.catalog.family, families={k: list(v) for k, v in server.catalog.families.items()}, members=members,
                         building=server.catalog.building)

    @app.get("/v1/hardware", summary="The detected hardware, the backend and where the latency figures come from")
    async def hardware() -> dict:
        return {"hardware": server.hardware.to_dict(), "backend": server.backend.describe(), "family": server.catalog.family,
                "latency": {m.name: m.latency.describe() for m in server.catalog.members.values()}, "notes": list(server.notes)}

    # HEAD beside GET for probes, left out of the schema: one route for both would give them one operation id.
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "live"}

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz", summary="Readiness: every member loaded and warm, the backend healthy", responses={503: {"model": Problem}})
    async def readyz():
        problem = server.problem()
        if problem is not None:
            return JSONResponse({"detail": problem}, 503, headers={"Retry-After": "1"})
        state = {"building": server.catalog.building, "reload_error": server.reload_error}
        return {"status": "ready", "members": len(server.catalog.members)} | {k: v for k, v in state.items() if v is not None}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        server.dispatcher.refresh_gauges()
        peers = [] if worker is None else worker.peers()
        return Response(server.metrics.render(peers, worker.name if worker else ""), media_type=server.metrics.content_type)

    return app
