"""`effx-serve loadtest`: locust against a running server, a report folder, and gates for CI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from effx_serve.cli.common import check_workers, checked, count, port, positive_float, positive_int, progress_line, table
from effx_serve.core.errors import UserError, missing_extra
from loadtest import compare, render, runner, scenarios, summary
from loadtest.arrivals import ARRIVALS, MAX_SPAN_S, Arrivals, TraceError, read_trace
from loadtest.plan import MAX_RATE, LoadTest, make_plan


def duration(text: str) -> float:
    """'90', '90s', '2m', '1h30m' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 30, 30s, 2m or 1h, got '{text}'")
    hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= MAX_SPAN_S:
        raise argparse.ArgumentTypeError(f"must be longer than zero and at most a week, got '{text}'")
    return total


def _phases(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in compare.PHASE_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"expected phase kinds among {','.join(compare.PHASE_KINDS)}, got '{text}'")
    return kinds


def _url(text: str) -> str:
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected the server's URL such as http://127.0.0.1:8000, got '{text}'")
    return text.rstrip("/")


_rate = checked(float, lambda value: 0 < value <= MAX_RATE, "a number of requests/s", f"above 0 and at most {MAX_RATE:,}")
_fraction = checked(float, lambda value: 0 <= value <= 1, "a number from 0 to 1", "from 0 to 1")
_above_one = checked(float, lambda value: 1 < value < float("inf"), "a number", "above 1")


def _bounds(text: str) -> tuple[float, float]:
    try:
        return compare.parse_bounds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _print_summary(report: dict, folder: Path) -> None:
    figures = report.get("summary") or {}
    latency = figures.get("latency_ms") or {}
    print(f"load test {report['status'].upper()}: {report['load']['scenario']} against {report['target']['url']}")
    if figures:
        print(f"  {figures['requests']} requests, {figures['ok']} answered, {figures['sla_rejected']} refused by SLA, "
              f"error rate {figures['error_rate'] or 0:.2%}, {figures['throughput_rps'] or 0:.1f} answers/s, "
              f"p50 {latency['p50'] or 0:.2f} ms, p99 {latency['p99'] or 0:.2f} ms")
    capacity = report.get("capacity")
    if capacity and len(report.get("curve", [])) > 1:
        best = capacity["max_rate"]
        print(f"  capacity (p99 <= {capacity['p99_bound_ms']:g} ms): " + (f"{best:.1f} req/s" if best is not None else "no step"))
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    print(f"  report: {folder / 'report.md'} (and report.html, report.json, raw/)")


def _print_comparison(report: dict, folder: Path) -> None:
    schedule = report.get("schedule") or {}
    print(f"load test comparison {report['status'].upper()}: against {report['target']['url']}"
          + (f", {schedule['requests']} requests over {schedule['duration_s']:g} s, {schedule['arrivals']['described']}" if schedule else ""))
    rows = [{"phase": p["name"], "requests": str(p.get("requests", "-")), "attainment": _pooled(p, "attainment"),
             "accuracy": _pooled(p, "effective_accuracy"), "goodput": _figure(p.get("goodput_rps"), ".1f"),
             "p50": _figure((p.get("latency_ms") or {}).get("p50"), ".1f"), "p99": _figure((p.get("latency_ms") or {}).get("p99"), ".1f"),
             "422": str(p.get("refused_422", "-")), "429": str(p.get("refused_429", "-")), "errors": str(p.get("errors", "-")),
             "members": ", ".join(f"{m} {share:.0%}" for m, share in (p.get("members") or {}).items()) or "-"}
            for p in report["phases"]]
    if rows:
        columns = [("phase", "phase", ""), ("requests", "requests", ""), ("attainment", "attainment", ""), ("eff. accuracy", "accuracy", ""),
                   ("goodput/s", "goodput", ""), ("p50 ms", "p50", ""), ("p99 ms", "p99", ""), ("422", "422", ""), ("429", "429", ""),
                   ("errors", "errors", ""), ("members", "members", "")]
        print("\n".join("  " + line for line in table(rows, columns).splitlines()))
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    print(f"  report: {folder / 'report.md'} (and report.html, report.json, raw/)")


def _pooled(phase: dict, key: str) -> str:
    """A share, with the range over the rounds when the phase ran more than once: `54.4% (41.2-73.5)`."""
    spread = render.round_range(phase, key)
    return _share(phase.get(key)) + (f" ({spread[0]:.1%}-{spread[1]:.1%})".replace("%-", "-") if spread else "")


def _share(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _figure(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense together, refused before anything runs."""
    check_workers(args.workers)
    if not args.compare:
        for given, option in ((args.latency_bounds, "--latency-bounds"), (args.compare_url, "--compare-url"),
                              (args.compare_label, "--compare-label"), (args.compare_phases, "--compare-phases"),
                              (args.compare_rounds, "--compare-rounds")):
            if given is not None:
                raise UserError(f"{option} needs --compare")
    if args.compare and args.member:
        raise UserError("--member pins every request; --compare pins each member in its own phase: give one or the other")
    if args.max_latency_ms is not None:
        if not args.member:
            raise UserError("--max-latency-ms bounds the requests pinned by --member; give --member too")
        scenario = scenarios.SCENARIOS.get(args.scenario)  # an unknown one is named when the load test starts
        if scenario is not None and {"latency", "both"} & set(scenario.slas):
            raise UserError(f"--max-latency-ms gives every request one bound; scenario {args.scenario} draws its own (use photos or accuracy)")
    if args.compare_label is not None and args.compare_url is None:
        raise UserError("--compare-label names the --compare-url phase; give --compare-url too")
    if args.compare:
        for given, option in ((args.gate_p99_ms, "--gate-p99-ms"), (args.gate_sla, "--gate-sla"), (args.gate_capacity, "--gate-capacity")):
            if given is not None:
                raise UserError(f"{option} does not apply to --compare (a comparison has no gates)")
        if args.rate is None and args.trace is None:
            raise UserError("--compare needs --rate (with --arrivals) or --trace: the schedule every phase sends")
    if args.burstiness is not None and args.arrivals == "poisson":
        raise UserError("--burstiness needs --arrivals gamma or onoff (Poisson arrivals have none to set)")
    if args.burst_seconds is not None and args.arrivals != "onoff":
        raise UserError("--burst-seconds needs --arrivals onoff")


def pinned_params(args: argparse.Namespace) -> str:
    """The query every request of a plain run carries: its pinned member, and with it the latency bound, if given (answered
    late rather than refused: every request counts in the throughput)."""
    if not args.member:
        return ""
    bound = {} if args.max_latency_ms is None else {"max_latency_ms": f"{args.max_latency_ms:g}", "on_miss": "best_effort"}
    return urlencode({"member": args.member, **bound})


def cmd_loadtest(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("locust") is None:  # looked up, not imported: importing locust patches this process (gevent)
        raise missing_extra("load", "loadtest", "locust")
    _check_options(args)
    gates = summary.Gates(max_error_rate=args.gate_error_rate, max_p99_ms=args.gate_p99_ms,
                          min_sla_attainment=args.gate_sla, min_capacity_rps=args.gate_capacity)
    trace = None
    if args.trace is not None:
        try:
            trace = tuple(read_trace(args.trace, args.duration))
        except TraceError as error:
            raise UserError(str(error)) from None
    arrivals = Arrivals(args.arrivals, args.burstiness, 1.0 if args.burst_seconds is None else args.burst_seconds)
    test = LoadTest(url=args.url, scenario=args.scenario, duration_s=30.0 if args.duration is None else args.duration, users=args.users,
                    rate=args.rate, steps=args.steps, p99_bound_ms=args.p99_bound_ms, gates=gates, workers=args.workers,
                    expect_workers=args.expect_workers, master_port=args.master_port, request_timeout_s=args.timeout,
                    ready_timeout_s=args.ready_timeout, seed=args.seed, arrivals=arrivals, trace=trace, trace_path=args.trace,
                    params=pinned_params(args), deadline_header=not args.no_deadline_header)
    if test.replays or args.compare:  # the new schedules' option combinations are one-line errors before anything runs
        try:
            make_plan(test, replay=args.compare)
        except ValueError as error:
            raise UserError(str(error)) from None
    folder = Path(args.report)
    progress = (lambda done, total: None) if args.json else progress_line("load test, seconds")
    command = "effx-serve " + shlex.join(args.argv)
    if args.compare:
        comparison = compare.Comparison(args.latency_bounds or (1.5, 3.0), args.compare_url, args.compare_label or "other server",
                                        phases=tuple(args.compare_phases or compare.PHASE_KINDS), rounds=args.compare_rounds or 1)
        report = compare.run(test, comparison, folder, command, progress)
    else:
        report = runner.run(test, folder, command, progress)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    elif args.compare:
        _print_comparison(report, folder)
    else:
        _print_summary(report, folder)
    return 0 if report["status"] == "passed" else 1


def add_parsers(sub) -> None:
    p = sub.add_parser("loadtest", help="load-test a running server with locust; a report (MD, HTML, PNG, JSON) and gates for CI")
    p.add_argument("--url", required=True, type=_url, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--scenario", default="mixed", help="request mix: mixed (default), smoke, accuracy, latency, photos, batch")
    p.add_argument("--member", help="pin every request to this member (e.g. one member's capacity alone; not with --compare)")
    p.add_argument("--max-latency-ms", type=positive_float, metavar="MS",
                   help="with --member: every request also carries this latency bound (on_miss=best_effort): the member's capacity "
                        "for latency-bound requests, which the server never holds back to batch as it may those without a bound")
    p.add_argument("--duration", type=duration, help="how long the load runs: 30, 45s, 2m (default: 30s; with --trace: the whole trace)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--users", type=positive_int, help="closed loop: users each sending as soon as answered (default: 8)")
    load.add_argument("--rate", type=_rate, help="open loop: requests/s at Poisson arrival times, however slow the answers")
    load.add_argument("--trace", metavar="FILE",
                      help="open loop: replay the arrival times of a trace file, one request a line: 'arrival_ms [latency_bound_ms]'")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson",
                   help="with --rate: poisson (default), gamma (gaps with a coefficient of variation of --burstiness) or "
                        "onoff (bursts at --burstiness x the rate, silence between)")
    p.add_argument("--burstiness", type=_above_one,
                   help="gamma: the coefficient of variation of the gaps (default 3); onoff: peak over mean rate (default 4)")
    p.add_argument("--burst-seconds", type=positive_float, help="onoff: the mean length of a burst in seconds (default 1)")
    compared = p.add_argument_group("comparison (--compare): one schedule sent routed by SLA, then with each member pinned")
    compared.add_argument("--compare", action="store_true",
                          help="send one schedule (--rate/--arrivals or --trace) once routed by SLA and once per member pinned; compare them")
    compared.add_argument("--latency-bounds", type=_bounds, metavar="LOW:HIGH",
                          help="a request's bound: a factor in this range x a random member's unloaded latency (default 1.5:3)")
    compared.add_argument("--compare-url", type=_url, metavar="URL", help="also send the routed phase to this server (e.g. another scheduler)")
    compared.add_argument("--compare-label", metavar="LABEL", help="the name of the --compare-url phase (default: other server)")
    compared.add_argument("--compare-rounds", type=positive_int, metavar="N",
                          help="run every phase N times, each round in another order, and pool them (default 1): a shared "
                               "machine's speed drifts over minutes, and the report shows each round's figures beside the pooled ones")
    compared.add_argument("--compare-phases", type=_phases, metavar="KINDS",
                          help="which phases run, of routed,pinned,other (default: all; the routed one always runs)")
    p.add_argument("--steps", type=positive_int, default=1,
                   help="a stepped ramp: the load rises in this many equal steps to --users or --rate (default: 1)")
    p.add_argument("--p99-bound-ms", type=positive_float, default=100.0,
                   help="capacity = the highest step whose p99 (failures counted as late) stays within this (default: %(default)s)")
    p.add_argument("--gate-error-rate", type=_fraction, default=0.01, help="fail above this share of errors (default: %(default)s)")
    p.add_argument("--gate-p99-ms", type=positive_float, help="fail when the p99 of answered requests is above this")
    p.add_argument("--gate-sla", type=_fraction, help="fail when any SLA class attains less than this share")
    p.add_argument("--gate-capacity", type=positive_float, help="fail when the capacity (req/s) is below this")
    workers = p.add_mutually_exclusive_group()
    workers.add_argument("--workers", type=count, default=0, help="locust worker processes on this machine (master/worker mode)")
    workers.add_argument("--expect-workers", type=count, default=0, help="run as master and wait for this many workers from other machines")
    p.add_argument("--master-port", type=port, default=5557, help="the master's port for --expect-workers (default: %(default)s)")
    p.add_argument("--no-deadline-header", action="store_true",
                   help="send no Effx-Deadline header: the server then counts each bound from when it reads the request, not from "
                        "when the request was meant to be sent")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds before a request counts as failed (default: %(default)s)")
    p.add_argument("--ready-timeout", type=positive_float, default=30.0, help="seconds to wait for the server's /readyz (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", required=True, help="folder for the report (replaced whole when the run ends: an existing one must be empty or a previous report)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    p.set_defaults(func=cmd_loadtest)
