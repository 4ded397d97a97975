"""The effx-serve locustfile: classification requests of a named scenario, closed or open loop, in steps.

Run by `effx-serve loadtest`, or by hand (then pass --host and the --effx-* options below):

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 10 -t 60s --effx-scenario mixed
    locust -f loadtest/locustfile.py --master ...   # and on other machines: locust -f loadtest/locustfile.py --worker --master-host H

Closed loop (the default): each user sends its next request when the previous one is answered. Open loop
(--effx-user-rate R): each user sends requests at Poisson arrival times of rate R whether or not earlier ones
were answered, and latency counts from the time a request was meant to be sent, so a slow server cannot
hide its tail by slowing the generator down (coordinated omission).

Replay (--effx-schedule FILE, written by `effx-serve loadtest` for bursty arrivals, a trace or a comparison phase):
one user sends the schedule's requests at their times, each in its own greenlet, latency again counted from the
intended time; the run ends once every request is answered (or timed out). A schedule of fixed requests (a
comparison's) sends the same requests every time; every replayed request's outcome and send lag is recorded, so
phases can be compared request by request.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import gevent
import gevent.pool
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from effx_serve.core.fs import write_atomic
from effx_serve.core.wire import DEADLINE_HEADER
from loadtest import scenarios
from loadtest.arrivals import SEQUENTIAL_GAP_S, Schedule
from loadtest.plan import parse_steps
from loadtest.tally import ERRORS, Outcome, Tally
from loadtest.workload import RequestFactory, judge, members_from_models

log = logging.getLogger("effx.loadtest")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("effx-serve")
    group.add_argument("--effx-scenario", default="mixed", help=f"request mix: {', '.join(scenarios.SCENARIOS)}")
    group.add_argument("--effx-user-rate", type=float, default=0.0,
                       help="open loop: each user's Poisson arrival rate in requests/s (0: closed loop)")
    group.add_argument("--effx-steps", default="", help="a stepped ramp, 'users:seconds,users:seconds,...' (else -u and -t)")
    group.add_argument("--effx-drain", type=float, default=4.0,
                       help="seconds at zero users after the last step, for answers in flight and the workers' last reports")
    group.add_argument("--effx-timeout", type=float, default=30.0, help="seconds before a request counts as a connection error")
    group.add_argument("--effx-max-pending", type=int, default=64,
                       help="open loop: requests a user may have in flight; arrivals beyond are counted as dropped")
    group.add_argument("--effx-seed", type=int, default=0)
    group.add_argument("--effx-out", default="", help="where the master (or a lone process) writes what it counted, as JSON")
    group.add_argument("--effx-schedule", default="",
                       help="replay this schedule (JSON, as effx-serve loadtest writes it) with one open-loop user; set -u 1")
    group.add_argument("--effx-params", default="",
                       help="query parameters added to every request, e.g. 'member=b0&on_miss=best_effort'")
    group.add_argument("--effx-deadline-header", action="store_true",
                       help="send each request with a latency bound its absolute deadline (Effx-Deadline: intended send time + bound)")


class LoadState:
    """What one locust process knows about the run: the requests to send, what it counted, the steps it ran."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.tally = Tally()
        self.factory: RequestFactory | None = None
        self.steps: list[dict] = []
        self.started = time.time()
        self.drain_started: float | None = None
        self.workers: set[str] = set()  # workers that reported to this master
        self.users_started = 0
        self.schedule: Schedule | None = None  # --effx-schedule
        # A schedule: [index, outcome kind, status, latency ms, member, send lag ms, a 429's reason] per request finished.
        self.results: list[list] = []
        self.replay_started: float | None = None  # epoch seconds of the schedule's time 0
        self.replay_claimed = False  # the schedule is sent once, by the first user to run
        self.replay_done = False  # every request sent and answered (or given up)
        self.stopping = False  # the test is stopping: send nothing more

    def prepare(self) -> None:
        """Read the served members (the SLAs are drawn from them) and make the images, once per process."""
        options = self.environment.parsed_options
        try:
            if options.effx_schedule:
                self.schedule = Schedule.from_json(Path(options.effx_schedule).read_text())
                if self.schedule.fixed:
                    return  # its requests are made already: no scenario, no members needed
            scenario = scenarios.get(options.effx_scenario)
            url = self.environment.host.rstrip("/") + "/v1/models"
            with urllib.request.urlopen(url, timeout=options.effx_timeout) as answer:
                members = members_from_models(json.load(answer))
            self.factory = RequestFactory(scenario, members, options.effx_seed)
        except (ValueError, KeyError, TypeError, IndexError, OSError, urllib.error.URLError) as error:
            self.schedule = None
            self.tally.examples.setdefault("setup", f"cannot prepare the workload: {error}")
            log.error("cannot prepare the workload: %s", error)
            self.environment.process_exit_code = 1  # nothing was sent: not a successful run

    def merge(self, worker: str, report: dict) -> None:
        self.workers.add(worker)
        if "effx" in report:
            self.tally.merge(Tally.from_json(report["effx"]))

    def write(self) -> None:
        out = self.environment.parsed_options.effx_out
        if not out:
            return
        data = {"tally": self.tally.to_json(), "steps": self.steps, "started": self.started, "drain_started": self.drain_started,
                "stopped": time.time(), "workers": len(self.workers)}
        if self.schedule is not None:
            data["replay"] = {"started": self.replay_started, "requests": len(self.schedule), "done": self.replay_done}
            data["results"] = sorted(self.results, key=lambda row: row[0])
        write_atomic(Path(out), json.dumps(data))


@events.init.add_listener
def _init(environment, **_) -> None:
    state = environment.effx = LoadState(environment)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        environment.events.report_to_master.add_listener(lambda client_id, data: data.update(effx=state.tally.take().to_json()))
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(lambda client_id, data: state.merge(client_id, data))
    if not isinstance(runner, WorkerRunner):
        try:  # checked here so a bad option stops locust at once instead of failing inside the running shape
            parse_steps(environment.parsed_options.effx_steps)
            scenarios.get(environment.parsed_options.effx_scenario)
        except ValueError as error:
            raise SystemExit(f"effx-serve locustfile: {error}") from None
        if not environment.host:
            raise SystemExit("effx-serve locustfile: no server to load; give its URL with -H/--host (e.g. http://127.0.0.1:8000)")
        out = environment.parsed_options.effx_out
        if out and Path(out).is_dir():
            raise SystemExit(f"effx-serve locustfile: --effx-out {out} is a folder; give a file path")
        environment.events.quitting.add_listener(lambda environment, **_: state.write())
        environment.events.test_stopping.add_listener(lambda environment, **_: setattr(state, "stopping", True))
        # Locust installs its own SIGTERM handler only after a shape has run its course; until then a SIGTERM would
        # end the process without its counts. Stopping the runner ends the shape and takes locust's normal way out.
        gevent.signal_handler(signal.SIGTERM, runner.quit)


@events.test_start.add_listener
def _test_start(environment, **_) -> None:
    if not isinstance(environment.runner, MasterRunner):
        environment.effx.prepare()


class ClassifyUser(FastHttpUser):
    wait_time = constant(0)
    connection_timeout = 5.0

    def __init__(self, environment) -> None:
        options = environment.parsed_options
        self.network_timeout = options.effx_timeout
        self.concurrency = options.effx_max_pending  # a connection for every request in flight: no wait for one is charged to the server
        super().__init__(environment)
        self.state: LoadState = environment.effx
        self.rate = options.effx_user_rate
        self.max_pending = options.effx_max_pending
        self.params = options.effx_params
        self.deadline_header = options.effx_deadline_header
        # A seed per user and process: repeatable runs, and no two workers send the same stream.
        self.state.users_started += 1
        self.rng = random.Random(f"{options.effx_seed}-{getattr(environment.runner, 'worker_index', 0)}-{self.state.users_started}")
        self.pending = gevent.pool.Group()
        self.next_at: float | None = None

    @task
    def classify(self) -> None:
        if self.state.schedule is not None:
            self._replay()
            return
        if self.state.factory is None:
            raise StopUser()
        if self.rate <= 0:
            self._send(time.perf_counter())
            return
        now = time.perf_counter()
        if self.next_at is None:  # a random phase, so users started together do not fire together
            self.next_at = now + self.rng.expovariate(self.rate)
        if self.next_at > now:
            gevent.sleep(self.next_at - now)
        intended, self.next_at = self.next_at, self.next_at + self.rng.expovariate(self.rate)
        if len(self.pending) >= self.max_pending:
            request = self.state.factory.next(self.rng)
            self.state.tally.sent(request.request_class)
            self.state.tally.record(Outcome(request.request_class, _epoch(intended), 0.0, "dropped",
                                            detail=f"the generator had {self.max_pending} requests in flight per user"))
            return
        self.pending.spawn(self._send, intended)

    def _replay(self) -> None:
        """Send the schedule once: each request in its own greenlet at its time; then wait for the answers."""
        state, schedule = self.state, self.state.schedule
        if state.replay_claimed:  # sent already (a user started again), or being sent by another user: idle until the end
            gevent.sleep(0.2)
            return
        state.replay_claimed = True
        start = time.perf_counter() + 0.05  # a moment to spare, so the first request is not late by construction
        state.replay_started = _epoch(start)
        for index, at in enumerate(schedule.times):
            if state.stopping:
                break
            if schedule.sequential:  # one at a time: sent the way the others are (a timed wake-up, a greenlet), then awaited
                intended = time.perf_counter() + SEQUENTIAL_GAP_S
                gevent.sleep(SEQUENTIAL_GAP_S)
                self.pending.spawn(self._send, intended, index).join()
                continue
            intended = start + at
            if intended > time.perf_counter():
                gevent.sleep(intended - time.perf_counter())
            if len(self.pending) >= self.max_pending:
                self._drop(index, intended)
                continue
            self.pending.spawn(self._send, intended, index)
        self.pending.join(timeout=self.network_timeout)
        state.replay_done = True

    def _request(self, index: int | None):
        schedule = self.state.schedule
        if schedule is not None and index is not None and schedule.fixed:
            return schedule.request(index, self.params)
        request = self.state.factory.next(self.rng, schedule.bounds[index] if schedule is not None and index is not None else None)
        return replace(request, path=f"{request.path}&{self.params}") if self.params else request

    def _drop(self, index: int, intended: float) -> None:
        request = self._request(index)
        self.state.tally.sent(request.request_class)
        self.state.tally.record(Outcome(request.request_class, _epoch(intended), 0.0, "dropped",
                                        detail=f"the generator had {self.max_pending} requests in flight"))
        self.state.results.append([index, "dropped", 0, 0.0, None, round((time.perf_counter() - intended) * 1000, 3), None])

    def _send(self, intended: float, index: int | None = None) -> None:
        tally, request = self.state.tally, self._request(index)
        tally.sent(request.request_class)
        lag_ms = (time.perf_counter() - intended) * 1000
        if self.rate > 0 or index is not None:
            tally.lag.add(lag_ms)
        endpoint = "batch" if request.batch else "classify"
        headers = {"content-type": request.content_type}
        if self.deadline_header and request.max_latency_ms is not None:  # the bound counts from when it was meant to be sent
            headers[DEADLINE_HEADER] = f"{_epoch(intended) + request.max_latency_ms / 1000.0:.6f}"
        with self.client.request("POST", request.path, data=request.body, headers=headers,
                                 name=f"{endpoint} {request.request_class.removeprefix('batch ')}", catch_response=True) as response:
            latency_ms = (time.perf_counter() - intended) * 1000
            error = getattr(response, "error", None)  # set only when the request failed
            verdict = judge(request, response.status_code or 0, response.content or b"", latency_ms, error and str(error))
            if verdict.kind in ERRORS:
                response.failure(verdict.detail or verdict.kind)
            else:
                response.success()
        tally.record(Outcome(request.request_class, _epoch(intended), latency_ms, verdict.kind, verdict.member,
                             verdict.attained, verdict.attained_e2e, verdict.detail))
        if index is not None:
            self.state.results.append([index, verdict.kind, response.status_code or 0, round(latency_ms, 3), verdict.member, round(lag_ms, 3),
                                       _refusal_reason(response.status_code, response.content)])

    def on_stop(self) -> None:
        self.pending.join(timeout=self.network_timeout)  # answers still in flight are counted as unfinished
        self.pending.kill(block=False)


def _refusal_reason(status: int | None, body: bytes | None) -> str | None:
    """A 429's "reason" (limit, overload, deadline: docs/serving.md), when the answer gives one."""
    if status != 429 or not body:
        return None
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return None
    return str(reason)[:40] if reason is not None else None


def _epoch(perf: float) -> float:
    return time.time() - (time.perf_counter() - perf)


class StepShape(LoadTestShape):
    """--effx-steps when given, else -u users for -t seconds; then a drain at zero users.

    Replaying a schedule, the steps only mark time (one user throughout): the run ends once the schedule is sent and
    answered, or at the latest a request timeout and the drain after the steps.
    """

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        state: LoadState = self.runner.environment.effx
        steps = parse_steps(options.effx_steps) or [(options.num_users or 1, options.run_time or math.inf)]
        elapsed, begins = self.get_run_time(), 0.0
        started = time.time() - elapsed  # the shape's start, in epoch seconds
        if state.replay_done:
            state.drain_started = state.drain_started or min(time.time(), started + sum(seconds for _, seconds in steps))
            return None
        for index, (users, seconds) in enumerate(steps):
            if len(state.steps) == index and elapsed >= begins:  # record every step begun, even one a late tick skipped
                state.steps.append({"index": index, "users": users, "start": started + begins, "seconds": seconds})
            begins += seconds
            if elapsed < begins:
                return users, max(users, 1)
        if state.schedule is not None and elapsed < begins + options.effx_timeout + options.effx_drain:
            state.drain_started = state.drain_started or started + begins
            return 1, 1  # still sending (a late generator) or waiting for answers: the user must not be stopped
        if elapsed < begins + options.effx_drain:
            state.drain_started = state.drain_started or started + begins
            return 0, 1000
        return None
