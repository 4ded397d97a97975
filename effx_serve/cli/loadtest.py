"""`effx-serve loadtest`: locust against a running server, a report folder, and gates for CI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import signal
from pathlib import Path
from urllib.parse import urlsplit

from effx_serve.cli.common import checked, positive_float, positive_int, progress_line
from effx_serve.core.errors import UserError, missing_extra
from loadtest import runner, summary
from loadtest.plan import LoadTest


def duration(text: str) -> float:
    """'90', '90s', '2m', '1h30m' -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 30, 30s, 2m or 1h, got '{text}'")
    hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero, got '{text}'")
    return total


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected the server's URL such as http://127.0.0.1:8000, got '{text}'")
    return text.rstrip("/")


_count = checked(int, lambda value: value >= 0, "a whole number", "0 or more")
_fraction = checked(float, lambda value: 0 <= value <= 1, "a number from 0 to 1", "from 0 to 1")


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


def cmd_loadtest(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("locust") is None:  # looked up, not imported: importing locust patches this process (gevent)
        raise missing_extra("load", "loadtest", "locust")
    gates = summary.Gates(max_error_rate=args.gate_error_rate, max_p99_ms=args.gate_p99_ms,
                          min_sla_attainment=args.gate_sla, min_capacity_rps=args.gate_capacity)
    test = LoadTest(url=args.url, scenario=args.scenario, duration_s=args.duration, users=args.users, rate=args.rate,
                    steps=args.steps, p99_bound_ms=args.p99_bound_ms, gates=gates, workers=args.workers,
                    expect_workers=args.expect_workers, master_port=args.master_port, request_timeout_s=args.timeout,
                    ready_timeout_s=args.ready_timeout, seed=args.seed)
    folder = Path(args.report)
    # A stop from a process manager (SIGTERM) ends the run the way Ctrl-C does: locust stopped, the report written.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        progress = (lambda done, total: None) if args.json else progress_line("load test, seconds")
        report = runner.run(test, folder, "effx-serve " + shlex.join(args.argv), progress)
    except NotADirectoryError as error:
        raise UserError(str(error)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        _print_summary(report, folder)
    return 0 if report["status"] == "passed" else 1


def add_parsers(sub) -> None:
    p = sub.add_parser("loadtest", help="load-test a running server with locust; a report (MD, HTML, PNG, JSON) and gates for CI")
    p.add_argument("--url", required=True, type=_url, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--scenario", default="mixed", help="request mix: mixed (default), smoke, accuracy, latency, photos, batch")
    p.add_argument("--duration", type=duration, default=30.0, help="how long the load runs: 30, 45s, 2m (default: 30s)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--users", type=positive_int, help="closed loop: users each sending as soon as answered (default: 8)")
    load.add_argument("--rate", type=positive_float, help="open loop: requests/s at Poisson arrival times, however slow the answers")
    p.add_argument("--steps", type=positive_int, default=1,
                   help="a stepped ramp: the load rises in this many equal steps to --users or --rate (default: 1)")
    p.add_argument("--p99-bound-ms", type=positive_float, default=100.0,
                   help="capacity = the highest step whose p99 (failures counted as late) stays within this (default: %(default)s)")
    p.add_argument("--gate-error-rate", type=_fraction, default=0.01, help="fail above this share of errors (default: %(default)s)")
    p.add_argument("--gate-p99-ms", type=positive_float, help="fail when the p99 of answered requests is above this")
    p.add_argument("--gate-sla", type=_fraction, help="fail when any SLA class attains less than this share")
    p.add_argument("--gate-capacity", type=positive_float, help="fail when the capacity (req/s) is below this")
    workers = p.add_mutually_exclusive_group()
    workers.add_argument("--workers", type=_count, default=0, help="locust worker processes on this machine (master/worker mode)")
    workers.add_argument("--expect-workers", type=_count, default=0, help="run as master and wait for this many workers from other machines")
    p.add_argument("--master-port", type=positive_int, default=5557, help="the master's port for --expect-workers (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds before a request counts as failed (default: %(default)s)")
    p.add_argument("--ready-timeout", type=positive_float, default=30.0, help="seconds to wait for the server's /readyz (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", required=True, help="folder for the report (replaced whole when the run ends)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    p.set_defaults(func=cmd_loadtest)
