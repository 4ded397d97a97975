"""Latency SLAs under load: what the scheduler and the router cost, and what they keep, side by side in one run.

    .venv/bin/python benchmarks/sla.py [--repo model_repository] [--duration 20] [--rounds 3] [--json sla.json] [--only cost|load]
                                       [--serve-arg=--workers=2 ...] [--baseline-arg=--lane-nice=0 ...] [--baseline-code DIR]
                                       [--isolate]

1. **Cost** (in-process, no HTTP): routing plus scheduling per request, p50 and p99, with 1,000 requests
   queued across the members of a fake device (target: <= 0.2 ms p50).
2. **Load** (real servers on the demo repository, the load generator on the same machine): the saturated
   throughput of the fastest member, its requests latency-bound as the phases' are, gives the capacity C (the median of --rounds measurements); then, with `effx-serve loadtest --compare`, the same
   open-loop schedule (Poisson, then bursty) at 0.8 C is sent once with SLA routing, once per member pinned
   and once to a second server, the baseline: by default the old per-member costing (`serve --costing member`),
   or any other settings (`--baseline-arg`, e.g. `--baseline-arg=--lane-nice=0`), or other code (`--baseline-code`, a
   worktree of another commit); and at C and 2 C with routing, to
   both, for goodput and the time to a refusal. Targets (on the first server):
   - at 0.8 C: >= 99% of admitted latency-bound requests within their bound on the server's clock, >= 95% as
     the client measures;
   - routing's effective accuracy above every pinned member's, its attainment within 2 points of the best
     pinned one (Poisson and bursty);
   - at 2 C: goodput >= 90% of goodput at C; refusals answered with p99 < 5 ms.
   Each missed target is printed with the margin it missed by. With `--isolate` the servers run on the first half of the
   CPUs and the load generator on the rest: on a small machine a generator sharing the servers' cores takes them at
   the moments it sends most, and what is measured at 2 C is then the machine as much as the server.
   Every comparison runs in --rounds rounds (`loadtest --compare-rounds`: each round in another phase order, since
   this machine's speed drifts over minutes); the tables give the pooled figures and each round's range, and a target
   is only met when the pooled figures meet it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving.py, beside this file, also when imported from elsewhere

import serving  # noqa: E402

from effx_serve.cli.common import checked, output_file, positive_int, run_script
from effx_serve.core import proc
from effx_serve.serve.catalog import Catalog, LatencyProfile, Member
from effx_serve.serve.dispatch import Dispatcher, ImageInfo
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.router import ROUTES, Sla
from effx_serve.serve.settings import DispatchSettings
from loadtest.prom import quantile_bounds
from loadtest.render import round_range

COST_TARGET_MS = 0.2
QUEUED = 1000
LOAD = 0.8  # of capacity, for the attainment and routing-against-pinning targets
OVERLOAD = 2.0
SERVER_ATTAINMENT, CLIENT_ATTAINMENT = 0.99, 0.95
ATTAINMENT_SLACK = 0.02  # routing's attainment may be this far below the best pinned member's
GOODPUT_KEPT = 0.9  # at OVERLOAD x capacity, of the goodput at capacity
CAPACITY_BOUND_MS = 1000.0  # the capacity's requests' bound: far above any wait of 16 users in a closed loop
REFUSAL_P99_MS = 5.0
BURSTY = ["--arrivals", "gamma", "--burstiness", "3"]
BATCH_S = 0.02
PHASE_SECONDS = checked(float, lambda value: 2 <= value <= 3600, "a number of seconds", "from 2 (a load test's shortest step) to 3600")


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
    return uvloop.run(_cost(requests))  # the event loop the server runs on (uvicorn picks uvloop)


# --- 2. what the scheduler and the router keep under load --------------------------------------------------------

def _loadtest(url: str, report: Path, extra: list[str], cpus: set[int] | None) -> dict:
    """`effx-serve loadtest` (locust, photos) with `extra` (on `cpus` only, if given); its report.json."""
    argv = [sys.executable, "-m", "effx_serve.cli", "loadtest", "--url", url, "--scenario", "photos", "--report", str(report), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, preexec_fn=proc.pinned(cpus))
    if not (report / "report.json").exists():
        raise RuntimeError(f"the load test wrote no report:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads((report / "report.json").read_text())


def capacity(url: str, member: str, duration_s: float, rounds: int, work: Path, cpus: set[int] | None) -> list[float]:
    """Answers/s at saturation with every request pinned to `member`, once per round: locust closed loop (the client the
    comparison uses, so the capacity is the one it can offer), 16 users. Each request carries a latency bound, as every
    request of the phases does, and one no answer comes near: the server holds requests without a bound back to batch
    them under a backlog, bounded ones never, so without it C would be a capacity the phases' traffic cannot have. One
    short measurement moved by a third between runs on this VM; the load phases take the median."""
    pinned = ["--member", member, "--max-latency-ms", f"{CAPACITY_BOUND_MS:g}"]
    return [_loadtest(url, work / f"capacity-{index}", ["--users", "16", "--duration", f"{duration_s:g}", *pinned], cpus)
            ["summary"]["throughput_rps"] for index in range(rounds)]


def compare(url: str, rate: float, arrivals: list[str], duration_s: float, rounds: int, report: Path, extra: list[str],
            cpus: set[int] | None) -> dict:
    """`effx-serve loadtest --compare`: the same open-loop schedule in every phase, in `rounds` rounds."""
    return _loadtest(url, report, ["--compare", "--rate", f"{rate:.1f}", *arrivals, "--duration", f"{duration_s:g}",
                                   "--compare-rounds", str(rounds), *extra], cpus)


def _answered_and_late(metrics: dict) -> tuple[float, float]:
    """From a server's /metrics: the requests answered (however routed), and those answered past their bound."""
    answered = sum(metrics.get("routes", {}).get(outcome, 0.0) for outcome in ROUTES)
    return answered, metrics.get("sla_misses", {}).get("latency latency", 0.0)


def server_attainment(phase: dict) -> float | None:
    """On the server's clock: answered requests within their bound over answered (admitted) ones, from its /metrics."""
    answered, late = _answered_and_late(phase.get("server_metrics") or {})
    return 1.0 - late / answered if answered else None


def dropped_share(phase: dict) -> tuple[float, float] | None:
    """(requests admitted, then dropped from a queue when they could no longer start in time, over all admitted ones; the
    server-clock in-bound share if those counted as misses), from its /metrics. The targets count answers: a drop is a
    429 refusal to its client, not a late answer, and the refusal targets count it (docs/serving.md)."""
    metrics = phase.get("server_metrics") or {}
    answered, late = _answered_and_late(metrics)
    admitted = answered + metrics.get("routes", {}).get("refused_deadline", 0.0)
    return ((admitted - answered) / admitted, (answered - late) / admitted) if admitted else None


def client_attainment(phase: dict) -> float:
    """On the client's clock: answered requests within their bound over answered ones."""
    return phase["within_bound"] / phase["answered"] if phase["answered"] else 0.0


def garbage_collections(phase: dict) -> str:
    """How long the garbage collector held every thread of the server during a phase, full passes apart."""
    metrics = phase.get("server_metrics") or {}
    count, held = metrics.get("gc_collections") or {}, metrics.get("gc_pause_ms") or {}
    if not count:
        return "garbage collections: not reported by the server"
    full = f"{count.get('2', 0):.0f} full, {held.get('2', 0.0):.1f} ms"
    return f"garbage collections holding every thread: {sum(count.values()):.0f}, {sum(held.values()):.1f} ms in all ({full})"


def expectation_errors(phase: dict) -> str:
    """How far the server's expectations were off for the phase's answered bounded requests: quantile bounds of observed minus
    expected, from its /metrics (the margin an admission would need to keep that share of them in bound); and the same for
    the decodings' wait for a lane, those a lane ran and those it found too late."""
    metrics = phase.get("server_metrics") or {}
    answers = _error_bounds(metrics.get("expectation_error_buckets"), "answered bounded requests")
    line = (f"expectation error (observed - expected, routing to answer) of {answers}" if answers else
            "expectation error: no answered request with a bound")
    waits = [bounds for outcome, what in (("ran", "run"), ("late", "found too late")) if
             (bounds := _error_bounds(metrics.get(f"decode_wait_{outcome}_buckets"), f"decodings {what}"))]
    return line + ("; a lane's wait, observed - expected, of " + " and ".join(waits) if waits else "")


def _error_bounds(buckets: dict | None, what: str) -> str | None:
    """'N what: p50 <= a ms, p90 <= b ms, p99 <= c ms' from an error histogram's cumulative buckets; None when empty."""
    errors = quantile_bounds(buckets or {}, (0.5, 0.9, 0.99))
    if not errors["count"]:
        return None
    shares = ", ".join(f"{key[:-6]} {'> 256' if value is None else f'<= {value:g}'} ms" for key, value in errors.items() if key != "count")
    return f"{errors['count']} {what}: {shares}"


def isolation() -> tuple[set[int], set[int]]:
    """(the servers' CPUs, the load generator's): the first half of this process's CPUs and the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--isolate needs at least 2 CPUs: one for the servers, one for the load generator")
    return set(cpus[: len(cpus) // 2]), set(cpus[len(cpus) // 2:])


BASELINE = ["--costing", "member"]


def load(repo: Path, duration_s: float, rounds: int, say, serve_args: list[str], isolate: bool = False,
         baseline: list[str] = BASELINE, baseline_code: Path | None = None) -> dict:
    figures: dict = {}
    server_cpus, generator_cpus = isolation() if isolate else (None, None)
    if isolate:
        say(f"the servers on CPUs {sorted(server_cpus)}, the load generator on {sorted(generator_cpus)}")
        figures["cpus"] = {"servers": sorted(server_cpus), "generator": sorted(generator_cpus)}
    with tempfile.TemporaryDirectory(prefix="effx-bench-sla-") as folder:
        work = Path(folder)
        with serving.router(repo, serve_args, work, cpus=server_cpus) as (port, _), \
                serving.router(repo, [*serve_args, *baseline], work, cpus=server_cpus, code=baseline_code) as (old_port, _):
            url, old_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{old_port}"
            fastest = serving.fastest_member(port)
            say(f"capacity: {fastest} pinned, closed loop at saturation")
            figures["capacity_rounds_rps"] = rounds_rps = capacity(url, fastest, min(duration_s, 10.0), rounds, work, generator_cpus)
            figures["capacity_rps"] = rate = statistics.median(rounds_rps)
            figures["fastest"] = fastest
            figures["baseline"] = label = baseline_label(baseline, baseline_code)
            old = ["--compare-url", old_url, "--compare-label", label]
            for name, arrivals in (("poisson", ["--arrivals", "poisson"]), ("bursty", BURSTY)):
                say(f"{name} at {LOAD:g} x capacity ({LOAD * rate:.0f} req/s): routed, each member pinned, {label}")
                figures[name] = compare(url, LOAD * rate, arrivals, duration_s, rounds, work / name, old, generator_cpus)
            for name, factor in (("at_capacity", 1.0), ("overload", OVERLOAD)):
                say(f"routed at {factor:g} x capacity ({factor * rate:.0f} req/s), and {label}")
                figures[name] = compare(url, factor * rate, ["--arrivals", "poisson"], duration_s, rounds, work / name,
                                        ["--compare-phases", "routed,other", *old], generator_cpus)
    return figures


def baseline_label(baseline: list[str], code: Path | None = None) -> str:
    """The baseline server's phase name: other code by its folder's name, the old costing by its name, other settings by
    their arguments."""
    parts = [f"code of {code.name}"] if code is not None else []
    parts += ["member costing"] if baseline == BASELINE else [" ".join(baseline)] if baseline else []
    return ", ".join(["routed", *parts])


def _range(phase: dict, key: str, spec: str) -> str:
    spread = round_range(phase, key)
    return f"{format(spread[0], spec)}-{format(spread[1], spec)}" if spread else ""


def _margin(ok: bool, by: str) -> str:
    return "ok" if ok else f"MISSED by {by}"


def print_load(figures: dict) -> list[str]:
    """The comparison tables and the targets; returns the targets missed."""
    missed = []
    spread = figures.get("capacity_rounds_rps", [])
    rounds = f", the median of {len(spread)}: {min(spread):.0f}-{max(spread):.0f}" if len(spread) > 1 else ""
    print(f"\ncapacity: {figures['capacity_rps']:.0f} answers/s ({figures['fastest']} pinned, at saturation{rounds})")
    for name in ("poisson", "bursty"):
        report = figures[name]
        print(f"\n{name} arrivals at {LOAD:g} x capacity, {report['schedule']['requests']} requests, bounds "
              f"{report['schedule']['bounds_ms']['min']:.1f}-{report['schedule']['bounds_ms']['max']:.1f} ms "
              f"({report['schedule']['latency_bounds'][0]:g}-{report['schedule']['latency_bounds'][1]:g} x a member's unloaded latency)")
        print(f"  {'phase':28s} {'attain':>7s} {'(rounds)':>13s} {'eff.acc':>8s} {'(rounds)':>13s} {'goodput':>8s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'429':>5s} {'422':>5s} {'err':>4s} {'in bound, server / client':>26s}")
        for phase in report["phases"]:
            latency = phase.get("latency_ms") or {}
            on_server = server_attainment(phase)
            print(f"  {phase['name']:28s} {phase['attainment']:7.1%} {_range(phase, 'attainment', '.1%'):>13s} "
                  f"{phase['effective_accuracy']:8.3f} {_range(phase, 'effective_accuracy', '.3f'):>13s} {phase['goodput_rps']:8.1f} "
                  f"{latency.get('p50') or float('nan'):7.1f} {latency.get('p99') or float('nan'):7.1f} {phase['refused_429']:5d} "
                  f"{phase['refused_422']:5d} {phase['errors']:4d} {on_server if on_server is not None else float('nan'):14.2%} / "
                  f"{client_attainment(phase):.2%}")
        routed = report["phases"][0]
        routes = (routed.get("server_metrics") or {}).get("routes") or {}
        late = (routed.get("server_metrics") or {}).get("late_stage") or {}
        print("  routed, as the server placed them: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(routes.items(), key=lambda kv: -kv[1]))
              + "; late answers by the stage that overran most: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(late.items())) or "none"))
        drops = dropped_share(routed)
        if drops is not None:
            print(f"  admitted, then dropped from a queue (429 deadline): {drops[0]:.2%} of the admitted; counted as misses, in bound on the "
                  f"server clock would be {drops[1]:.2%}")
        print("  " + expectation_errors(routed))
        print("  " + garbage_collections(routed))
        pinned = [p for p in report["phases"] if p["kind"] == "pinned"]
        on_server = server_attainment(routed)
        on_client = client_attainment(routed)
        best = max(pinned, key=lambda p: p["attainment"])
        accurate = max(pinned, key=lambda p: p["effective_accuracy"])
        server_value = on_server if on_server is not None else 0.0
        checks = [  # (target, ok, measured, how far from the target)
            (f"admitted within bound, server clock >= {SERVER_ATTAINMENT:.0%}", server_value >= SERVER_ATTAINMENT,
             f"{server_value:.2%}", f"{(SERVER_ATTAINMENT - server_value) * 100:.2f} points"),
            (f"admitted within bound, client clock >= {CLIENT_ATTAINMENT:.0%}", on_client >= CLIENT_ATTAINMENT, f"{on_client:.2%}",
             f"{(CLIENT_ATTAINMENT - on_client) * 100:.2f} points"),
            (f"effective accuracy above every pinned member's (best {accurate['name']}: {accurate['effective_accuracy']:.3f})",
             routed["effective_accuracy"] > accurate["effective_accuracy"], f"{routed['effective_accuracy']:.3f}",
             f"{accurate['effective_accuracy'] - routed['effective_accuracy']:.3f}"),
            (f"attainment within {ATTAINMENT_SLACK:.0%} of the best pinned ({best['name']}: {best['attainment']:.1%})",
             routed["attainment"] >= best["attainment"] - ATTAINMENT_SLACK, f"{routed['attainment']:.1%}",
             f"{(best['attainment'] - ATTAINMENT_SLACK - routed['attainment']) * 100:.1f} points"),
        ]
        for label, ok, value, by in checks:
            print(f"  target: {label}: {value} {_margin(ok, by)}")
            if not ok:
                missed.append(f"{name}: {label}: {value}")
    print()
    servers = [overload_line(*phases) for phases in zip(figures["at_capacity"]["phases"], figures["overload"]["phases"], strict=True)]
    kept, refusal = servers[0]  # the targets are the first server's
    for label, ok, value, by in (
            (f"goodput at {OVERLOAD:g} x capacity >= {GOODPUT_KEPT:.0%} of goodput at capacity", kept >= GOODPUT_KEPT, f"{kept:.2%}",
             f"{(GOODPUT_KEPT - kept) * 100:.2f} points"),
            (f"refusals p99 < {REFUSAL_P99_MS:g} ms", refusal < REFUSAL_P99_MS, f"{refusal:.2f} ms", f"{refusal - REFUSAL_P99_MS:.2f} ms")):
        print(f"target: {label}: {value} {_margin(ok, by)}")
        if not ok:
            missed.append(f"{label}: {value}")
    return missed


def overload_line(at_capacity: dict, overload: dict) -> tuple[float, float]:
    """Print one server's goodput at capacity and at overload, and its refusals there; (goodput kept, refusal p99 ms)."""
    kept = overload["goodput_rps"] / at_capacity["goodput_rps"] if at_capacity["goodput_rps"] else 0.0
    refusal_p99 = (overload.get("refusal_latency_ms") or {}).get("p99")
    after_send = (overload.get("refusal_after_send_ms") or {}).get("p99")
    in_server = quantile_bounds((overload.get("server_metrics") or {}).get("refusal_buckets") or {})
    on_server = server_attainment(overload)
    print(f"{overload['name']} at capacity: goodput {at_capacity['goodput_rps']:.1f}/s, attainment {at_capacity['attainment']:.1%}; "
          f"at {OVERLOAD:g} x capacity: goodput {overload['goodput_rps']:.1f}/s ({kept:.1%} of it), attainment {overload['attainment']:.1%}, "
          f"in bound {on_server if on_server is not None else float('nan'):.1%} / "
          f"{client_attainment(overload):.1%} (server / client clock), "
          f"refused {overload['refused_429']} (429) + {overload['refused_422']} (422), refusal p99 "
          f"{refusal_p99 if refusal_p99 is not None else float('nan'):.2f} ms as the client saw it"
          + (f" ({after_send:.2f} ms from its actual send: the rest is the generator's lag)" if after_send is not None else "")
          + (f", <= {in_server['p99_le_ms']:g} ms in the server (arrival to refusal)" if in_server.get("p99_le_ms") is not None else ""))
    causes = overload.get("refusal_latency_by_reason_ms") or {}
    if causes:  # refused at admission at once, or dropped when the deadline could no longer be made
        print("  refusal p99 by cause: " + ", ".join(f"{cause} {tail['p99']:.2f} ms ({tail['count']})" for cause, tail in causes.items()))
    return kept, refusal_p99 if refusal_p99 is not None else math.inf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default="model_repository", help="the demo repository (effx-serve build-repo --demo)")
    parser.add_argument("--duration", type=PHASE_SECONDS, default=20.0, help="seconds of load per phase (default 20)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds of every comparison, each in another phase order (default 3)")
    parser.add_argument("--only", choices=("cost", "load"))
    parser.add_argument("--json", type=output_file, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--isolate", action="store_true",
                        help="the servers on the first half of the CPUs, the load generator on the rest (else they share them all)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an argument for both servers' `effx-serve serve`, e.g. --serve-arg=--workers=2 (repeat for several)")
    parser.add_argument("--baseline-arg", action="append", metavar="ARG",
                        help="the baseline server's own arguments, e.g. --baseline-arg=--lane-nice=0 (repeat for several; "
                             "default: --costing member, the old per-member costing, unless --baseline-code is given)")
    parser.add_argument("--baseline-code", type=serving.checkout, metavar="DIR",
                        help="the baseline server runs the code in DIR (a checkout or worktree of another commit, first on its "
                             "PYTHONPATH) with the same settings unless --baseline-arg is given")
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
    if args.only in (None, "load"):
        repo = Path(args.repo)
        if not (repo / "manifest.json").is_file():
            print(f"{repo} has no manifest.json: build the demo repository first (effx-serve build-repo --demo)", file=sys.stderr)
            return 2
        figures["load"] = load(repo, args.duration, max(1, args.rounds), lambda line: print(line, file=sys.stderr, flush=True), args.serve_arg,
                               args.isolate, args.baseline_arg or ([] if args.baseline_code else BASELINE), args.baseline_code)
        print_load(figures["load"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    run_script(main)
