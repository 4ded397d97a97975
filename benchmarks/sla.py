"""Latency SLAs under load: what the scheduler and the router cost, and what they keep, side by side in one run.

    .venv/bin/python benchmarks/sla.py [--repo model_repository] [--duration 20] [--json sla.json] [--only cost|load]

1. **Cost** (in-process, no HTTP): routing plus scheduling per request, p50 and p99, with 1,000 requests
   queued across the members of a fake device (target: <= 0.2 ms p50).
2. **Load** (real servers on the demo repository, the load generator on the same machine): the saturated
   throughput of the fastest member gives the capacity C; then, with `effx-serve loadtest --compare`, the same
   open-loop schedule (Poisson, then bursty) at 0.8 C is sent once with SLA routing, once per member pinned
   and once to a second server with the old per-member costing (`serve --costing member`); and at C and 2 C with
   routing, for goodput and the time to a refusal. Targets:
   - at 0.8 C: >= 99% of admitted latency-bound requests within their bound on the server's clock, >= 95% as
     the client measures;
   - routing's effective accuracy above every pinned member's, its attainment within 2 points of the best
     pinned one (Poisson and bursty);
   - at 2 C: goodput >= 90% of goodput at C; refusals answered with p99 < 5 ms.
   Each missed target is printed with the margin it missed by.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from effx_serve.serve.catalog import Catalog, LatencyProfile, Member
from effx_serve.serve.dispatch import Dispatcher, ImageInfo
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.router import Sla
from effx_serve.serve.settings import DispatchSettings

COST_TARGET_MS = 0.2
QUEUED = 1000
BATCH_S = 0.02


# --- 1. what routing and scheduling cost ------------------------------------------------------------------------

class SleepingBackend:
    """A device that takes BATCH_S per batch without using the CPU: slower than the requests arrive, so a queue builds,
    and every CPU millisecond the process spends is the router's and the scheduler's."""

    kind, runtime, lanes, on_host_cpu = "sleeping", "onnxruntime", 1, True

    async def start(self, members):
        pass

    async def infer(self, member, batch, deadline=math.inf):
        await asyncio.sleep(BATCH_S)
        return np.zeros((len(batch), 10), np.float32)

    def problem(self):
        return None

    def queue_delay_ms(self, member):
        return 0.0

    async def close(self):
        pass


def _member(name: str, accuracy: float, ms: float) -> Member:
    profile = LatencyProfile("bench", "onnxruntime", "measured", ((1, ms), (16, 8 * ms)), True)
    return Member(name, "bench", accuracy, "measured", 32, Path("/nonexistent"), "images", "logits", tuple(map(str, range(10))),
                  profile, 0, 0)


async def _cost(requests: int) -> dict:
    """Requests flow through a device slower than they arrive, 1,000 of them queued across four members: the route()
    call is timed per request, and the whole per-request cost (routing, queueing, batching, answering) is the
    process's CPU time over the run divided by the requests (the device itself uses none)."""
    members = {m.name: m for m in (_member("b0", 0.5, 0.7), _member("b1", 0.6, 1.0), _member("b2", 0.7, 1.4), _member("b3", 0.8, 1.9))}
    catalog = Catalog(Path("."), "bench", "cpu", "bench", {"bench": tuple(members)}, members, "bench")
    dispatcher = Dispatcher(catalog, SleepingBackend(), DispatchSettings(max_queue=10 * QUEUED, cpu_lanes=1), ServerMetrics())
    await dispatcher.start()
    image = np.zeros((3, 32, 32), np.float32)
    info = [ImageInfo("JPEG", 640 * 480)]
    slots = asyncio.Semaphore(QUEUED)
    routes, depths, running = [], [], set()

    async def one(member: Member, deadline: float) -> None:
        try:
            await dispatcher.device.run(member, [image], deadline, hard=True)
        finally:
            slots.release()

    cpu_started, wall_started = time.process_time(), time.monotonic()
    for _ in range(requests):
        await slots.acquire()
        depths.append(sum(dispatcher.queued(name) for name in members))
        arrival = time.monotonic()
        routed = dispatcher.route(Sla(max_latency_ms=5000.0), info, arrival + 5.0, arrival)
        routes.append((time.monotonic() - arrival) * 1000.0)
        task = asyncio.create_task(one(routed.member, arrival + 5.0))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    cpu_ms = (time.process_time() - cpu_started) * 1000.0
    wall_s = time.monotonic() - wall_started
    await dispatcher.close()
    return {"requests": requests, "queued_median": statistics.median(depths), "route_p50_ms": statistics.median(routes),
            "route_p99_ms": float(np.percentile(routes, 99)), "per_request_cpu_ms": cpu_ms / requests,
            "requests_per_s": requests / wall_s, "target_ms": COST_TARGET_MS}


def cost(requests: int = 3000) -> dict:
    return asyncio.run(_cost(requests))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default="model_repository", help="the demo repository (effx-serve build-repo --demo)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase (default 20)")
    parser.add_argument("--only", choices=("cost", "load"))
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    figures: dict = {}
    if args.only in (None, "cost"):
        figures["cost"] = result = cost()
        whole = result["per_request_cpu_ms"]
        verdict = "ok" if whole <= COST_TARGET_MS else f"MISSED by {whole - COST_TARGET_MS:.3f} ms"
        print(f"with {result['queued_median']:.0f} requests queued (median): route() p50 {result['route_p50_ms']:.3f} ms, "
              f"p99 {result['route_p99_ms']:.3f} ms; routing + scheduling + answering per request {whole:.3f} ms of CPU "
              f"(mean over {result['requests']} requests) "
              f"(target <= {COST_TARGET_MS} ms: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
