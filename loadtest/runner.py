"""`effx-serve loadtest`: check the server, run locust headless, and write the report whatever happened.

The report folder is built beside its target and swapped in whole (effx_serve.core.atomic_dir), so a killed run
never leaves half a report, and a failed run (unreachable server, errors, a bad scenario) still leaves one
that says what went wrong.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qs

from effx_serve.core import atomic_dir, proc
from effx_serve.core.errors import UserError
from effx_serve.hardware.ids import cpu_model_name
from loadtest import prom, render, scenarios, summary
from loadtest.arrivals import Schedule
from loadtest.plan import LoadTest, Plan, format_steps, make_plan, schedule_times
from loadtest.tally import Tally
from loadtest.workload import members_from_models

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
Progress = Callable[[int, int], None]  # (seconds done, seconds planned)
DRAIN_S = 4.0  # zero users after the last step: answers in flight arrive and workers send their last counts (every 3 s)
REPLAY_MAX_PENDING = 256  # requests in flight the one user replaying a schedule may have (a Poisson user: 64)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")  # the report, written as strict JSON, could not hold it


def _get_json(url: str, timeout_s: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.load(answer, parse_constant=_not_json)


def preflight(test: LoadTest, target: dict) -> list[str]:
    """Wait for the server and read what the workload needs from it (into `target`); the problems, if any."""
    reason = proc.wait_ready(f"{test.url}/readyz", test.ready_timeout_s, poll_s=0.5)
    if reason:
        return [reason]
    target["ready"] = True
    try:
        models = _get_json(test.url + "/v1/models", 10)
        members = members_from_models(models)  # what every locust process will need
        if not members:
            raise ValueError("it lists no members")
        target |= {"family": models["default_family"], "hardware": _get_json(test.url + "/v1/hardware", 10),
                   "members": [{"name": m.name, "accuracy": m.accuracy, "expected_latency_ms": m.expected_latency_ms} for m in members]}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"GET /v1/models or /v1/hardware did not give what the load test needs: {error!r}"]
    served = {m["name"] for m in target["members"]}
    pinned = [name for name in parse_qs(test.params).get("member", []) if name not in served]
    return [f"the server has no member {name!r} (it serves {', '.join(sorted(served))})" for name in pinned]


def versions() -> dict:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
        commit_id = commit.stdout.strip() if commit.returncode == 0 else None
    except OSError:  # no git on this machine
        commit_id = None
    return {"effx_serve": version("effx-serve"), "locust": version("locust"), "python": platform.python_version(),
            "platform": platform.platform(), "generator_cpu": cpu_model_name(),
            "cores": os.cpu_count(), "git_commit": commit_id}


def locust_argv(test: LoadTest, plan: Plan, raw: Path, master_port: int | None, schedule: Path | None = None, params: str = "") -> list[str]:
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", test.url, "--headless", "--only-summary",
            "--csv", str(raw / "locust"), "--csv-full-history", "--html", str(raw / "locust.html"),
            "--logfile", str(raw / "locust.log"), "--stop-timeout", f"{test.request_timeout_s:g}",
            "--effx-scenario", test.scenario, "--effx-user-rate", repr(plan.per_user_rate),
            "--effx-steps", format_steps(plan), "--effx-drain", repr(DRAIN_S),
            "--effx-timeout", repr(test.request_timeout_s), "--effx-seed", str(test.seed), "--effx-out", str(raw / "counts.json")]
    params = "&".join(filter(None, (test.params, params)))
    if schedule is not None:
        argv += ["--effx-schedule", str(schedule), "--effx-max-pending", str(REPLAY_MAX_PENDING)]
    if params:
        argv += ["--effx-params", params]
    if test.deadline_header:
        argv.append("--effx-deadline-header")
    if master_port is not None:
        argv += ["--master", "--master-bind-port", str(master_port), "--expect-workers", str(test.workers or test.expect_workers),
                 "--expect-workers-max-wait", f"{max(test.ready_timeout_s, 60):g}"]
    return argv


def run_locust(test: LoadTest, plan: Plan, raw: Path, progress: Progress, schedule: Path | None = None, params: str = "") -> list[str]:
    """Run the master (or lone process) and any local workers; the problems seen, if any.

    With `schedule`, one user replays it (with `params` added to each request of a fixed schedule).
    """
    distributed = test.workers > 0 or test.expect_workers > 0
    port = (proc.free_port() if test.workers else test.master_port) if distributed else None
    planned = round(sum(s.seconds for s in plan.steps) + DRAIN_S)
    limit_s = planned + test.request_timeout_s + 60 + (max(test.ready_timeout_s, 60) if distributed else 0)
    problems: list[str] = []
    with open(raw / "locust_stdout.txt", "w") as stdout:
        with_us = proc.ending_with_parent()  # a load test killed outright leaves no locust generating load behind it
        master = subprocess.Popen(locust_argv(test, plan, raw, port, schedule, params), stdout=stdout, stderr=subprocess.STDOUT,
                                  preexec_fn=with_us)
        workers = [subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
                                     "--master-port", str(port), "--logfile", str(raw / f"worker-{i}.log")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=with_us) for i in range(test.workers)]
        started = time.monotonic()
        try:
            while master.poll() is None and time.monotonic() - started < limit_s:
                progress(min(round(time.monotonic() - started), planned - 1), planned)
                time.sleep(0.5)
            if master.poll() is None:
                problems.append(f"locust did not finish within {limit_s:.0f} s and was stopped")
            elif master.returncode not in (0, 1):  # 1: locust's own "some requests failed", which the report judges instead
                problems.append(f"locust exited with code {master.returncode} (see raw/locust.log and raw/locust_stdout.txt)")
            else:
                progress(planned, planned)
        except KeyboardInterrupt:
            problems.append("interrupted (Ctrl-C or SIGTERM): the report covers the run up to then")
        finally:
            for process in [master, *workers]:
                if process.poll() is None:
                    proc.stop(process, grace_s=10)
    return problems


def locust_request_count(raw: Path) -> int | None:
    """Locust's own count of requests (its Aggregated row), to check the generator's counts against."""
    try:
        with open(raw / "locust_stats.csv", newline="") as handle:
            return next(int(row["Request Count"]) for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    except (OSError, StopIteration, KeyError, ValueError):
        return None


def build(test: LoadTest, plan: Plan | None, raw: Path, target: dict, problems: list[str]) -> dict:
    """The report's figures from what locust's processes counted (raw/counts.json)."""
    report: dict = {"target": target}
    try:
        counts = json.loads((raw / "counts.json").read_text())
    except (OSError, ValueError):
        if plan is not None and target.get("ready"):
            problems.append("the load generator wrote no counts (see raw/locust.log)")
        return report
    tally = Tally.from_json(counts["tally"])
    stopped = counts.get("drain_started") or counts["stopped"]
    ran = counts["steps"]
    replay = counts.get("replay") or {}
    if replay.get("started") and ran and plan is not None:  # a schedule's time 0 is when its user began: steps follow it
        offset = replay["started"] - ran[0]["start"]
        ran = [s | {"start": s["start"] + offset} for s in ran]
        stopped = replay["started"] + sum(s.seconds for s in plan.steps)
    windows = [summary.Window(s["index"], s["users"], plan.steps[s["index"]].offered_rate, s["start"],
                              ran[i + 1]["start"] if i + 1 < len(ran) else stopped) for i, s in enumerate(ran)]
    start = windows[0].start if windows else counts["started"]
    totals = summary.totals(tally, stopped - start)
    totals["locust_request_count"] = locust_request_count(raw)
    curve = summary.curve(tally, windows, test.p99_bound_ms)
    report |= {"summary": totals, "classes": summary.classes(tally), "members": summary.members(tally), "curve": curve,
               "capacity": summary.capacity(curve, test.p99_bound_ms), "timeline": summary.timeline(tally, start, stopped),
               "step_starts": [w.start - start for w in windows]}
    report["workers"] = counts.get("workers", 0)
    if "setup" in tally.examples:
        problems.append(f"a load generator could not start: {tally.examples['setup']}")
    if totals["completed"] == 0:
        problems.append("no request was completed")
    return report


def arrivals_report(test: LoadTest) -> dict:
    """How the requests were timed, for the report."""
    if test.trace is not None:
        return {"kind": "trace", "trace": test.trace_path, "requests": len(test.trace),
                "described": f"replay of trace {test.trace_path} ({len(test.trace)} requests)"}
    return {"kind": test.arrivals.kind, "burstiness": test.arrivals.factor, "burst_s": test.arrivals.burst_s if test.arrivals.kind == "onoff" else None,
            "described": test.arrivals.describe()}


def run(test: LoadTest, report_dir: Path, command: str, progress: Progress = lambda done, total: None) -> dict:
    """Run the whole load test and write the report folder; returns the report (its "status" says pass or fail)."""
    test = replace(test, url=test.url.rstrip("/"))  # locust joins host and path as strings: no '//v1/classify'
    staging = open_report(report_dir)
    raw = staging / "raw"
    started = time.time()
    problems: list[str] = []
    plan = None
    target: dict = {"url": test.url, "ready": False}
    try:
        scenarios.get(test.scenario)
        plan = make_plan(test)
    except ValueError as error:
        problems.append(str(error))
    if plan is not None:
        try:
            problems += preflight(test, target)
        except KeyboardInterrupt:
            problems.append("interrupted (Ctrl-C or SIGTERM) while waiting for the server")
    metrics: dict = {"scraped": False, "reason": "the load did not run"}
    schedule = None
    if plan is not None and plan.replay and not problems:
        try:
            schedule = raw / "schedule.json"
            schedule.write_text(Schedule(*schedule_times(test, plan)).to_json())
        except ValueError as error:
            problems.append(str(error))
    if plan is not None and not problems:
        before, reason = prom.scrape(test.url)
        problems += run_locust(test, plan, raw, progress, schedule)
        after, reason_after = prom.scrape(test.url)
        if before and after:
            (raw / "metrics_before.prom").write_text(before)
            (raw / "metrics_after.prom").write_text(after)
            try:
                metrics = {"scraped": True, "reason": None} | prom.delta(before, after)
            except (ValueError, KeyError) as error:
                metrics["reason"] = f"/metrics is not the Prometheus text effx-serve writes: {error!r}"
        else:
            metrics["reason"] = reason or reason_after
    report = build(test, plan, raw, target, problems)
    report |= {"command": command, "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
               "duration_s": time.time() - started, "server_metrics": metrics, "versions": versions(),
               "load": {"scenario": test.scenario, "params": test.params, "mode": plan and plan.mode, "workers": report.pop("workers", 0),
                        "per_user_rate": plan and plan.per_user_rate,
                        "steps": [asdict(s) | {"index": i} for i, s in enumerate(plan.steps)] if plan else []}}
    if test.replays:  # bursty arrivals or a trace: say how the requests were timed (Poisson users need no word)
        report["load"]["arrivals"] = arrivals_report(test)
    if not problems:
        report["gates"] = summary.check_gates(test.gates, report["summary"], report["classes"], report.get("capacity"))
        problems += [f"gate failed: {g['name']} {g['threshold']} (was {g['value']})" for g in report["gates"] if not g["passed"]]
    report["status"] = "failed" if problems else "passed"
    report["problems"] = problems
    close_report(report, staging, report_dir, render.render)
    return report


def open_report(report_dir: Path) -> Path:
    """A fresh staging folder (with raw/) beside `report_dir`, which `close_report` swaps in whole."""
    refusal = atomic_dir.replace_refusal(report_dir, "report.json")
    if refusal:
        raise UserError(f"--report {report_dir} {refusal}; give a new or empty folder, or a previous report's")
    try:
        staging = atomic_dir.begin(report_dir)
    except OSError as error:
        raise UserError(f"--report {report_dir}: cannot write beside it ({error.strerror or error})") from None
    (staging / "raw").mkdir()
    return staging


def close_report(report: dict, staging: Path, report_dir: Path, draw: Callable[[dict, Path], object]) -> None:
    """List the raw files, `draw` the report (Markdown, HTML, charts), write report.json, and swap the folder in."""
    report["files"] = {"report.json": "report.json"} | {p.name: f"raw/{p.name}" for p in sorted((staging / "raw").iterdir())}
    draw(report, staging)
    (staging / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False, default=str))
    atomic_dir.swap_in(staging, report_dir)
