"""Serving: per request, the fastest family member that meets the SLA on the detected hardware.

settings -> server (everything a running server holds) -> flow (one request: SLA, route, decode, dispatch,
answer; no HTTP in it) -> dispatch (expected latency, routing, decoding and running) -> router, scheduler
(one per device, earliest deadline first), estimates, catalog, metrics. schema is the API's parameters and
answers, errors the reasons a request is not served; backends/ run the batches and http/ is the FastAPI edge.

May import: effx_serve.core, effx_serve.hardware, effx_serve.perf (the session factory),
effx_serve.repository (manifest and config reading). Never imports torch.
"""
