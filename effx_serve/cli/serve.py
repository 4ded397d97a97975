"""`effx-serve serve`: the SLA-routing HTTP server on a model repository."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from effx_serve.cli.common import checked, port, positive_int
from effx_serve.cli.repository import DEFAULT_REPOSITORY
from effx_serve.core.errors import UserError
from effx_serve.core.proc import MAX_NICE, available_cpus, each, ending_with_parent, map_large_allocations, stop
from effx_serve.repository import manifest
from effx_serve.serve.backends.base import BACKENDS
from effx_serve.serve.router import POLICIES
from effx_serve.serve.settings import COSTINGS, MAX_START_HEADROOM, DispatchSettings, ServerSettings
from effx_serve.serve.workers import ConnectionCounts, WorkerLink, WorkerSpec, auto_workers, listen, supervise

SWITCH_INTERVAL_MS = 5.0  # Python's own: 1 and 0.2 ms served no more (docs/serving-measurements.md, the benchmark)
_megabytes = checked(float, lambda value: 0 < value <= 1_000_000, "a number of MiB", "above 0")
_seconds = checked(float, lambda value: 0 < value <= 3600, "a number of seconds", "above 0 and at most 3600")
_deadline_ms = checked(float, lambda value: 0 < value <= 3_600_000, "a number of milliseconds", "above 0 and at most 3600000")
_switch_ms = checked(float, lambda value: 0.01 <= value <= 100, "a number of milliseconds", "from 0.01 to 100")
_nice = checked(int, lambda value: 0 <= value <= MAX_NICE, "a number of nice levels", f"from 0 to {MAX_NICE}")
_headroom = checked(float, lambda value: 0 <= value <= MAX_START_HEADROOM, "a fraction of a job's expected run time",
                    f"from 0 to {MAX_START_HEADROOM:g}")
_watch_s = checked(float, lambda value: 0 <= value <= 3600, "a number of seconds", "from 0 (never) to 3600")
DEMO_HARDWARE = ("nvidia-h200", "tpu-v3")  # the demo repository also predicts these (the Makefile's choice before --demo)
DEMO_WATCH_S = 2.0
AUTO = "auto"
BUILDER_NICE = 10  # the build yields the cores to the requests being served


def needs_demo_build(repository: Path) -> bool:
    """No repository yet, or a partial one whose build was interrupted."""
    try:
        return "partial" in manifest.read(repository)
    except UserError:
        return not (repository / "manifest.json").exists()  # a broken manifest is the server's to report


def start_demo_build(repository: Path) -> subprocess.Popen:
    """`build-repo --demo` into `repository` in a child process at a lower priority: the server serves its members as they
    are written (b0 first, in minutes), while it trains the rest. Its progress lines go to this terminal."""
    argv = [sys.executable, "-m", "effx_serve.cli", "build-repo", "--demo", "--out", str(repository), "--hardware", *DEMO_HARDWARE]
    # At a lower priority, and ending with the server, killed ones too (the next `serve --demo` resumes it).
    builder = subprocess.Popen(argv, preexec_fn=each(lambda: os.nice(BUILDER_NICE), ending_with_parent()))
    print(f"building the demo repository in the background (pid {builder.pid}: {' '.join(argv[3:])}); serving each member as it is ready",
          flush=True)
    return builder


def wait_for_first_member(repository: Path, builder: subprocess.Popen, stop: threading.Event | None = None, poll_s: float = 0.5) -> None:
    """Return once the build has written the repository's manifest; UserError when the build dies first, or `stop` is set."""
    stop = stop or threading.Event()
    while not (repository / "manifest.json").exists():
        if builder.poll() is not None:
            raise UserError(f"the demo build stopped (exit {builder.returncode}) before its first member was ready; its output is above")
        if stop.wait(poll_s):
            raise UserError("stopped before the demo build's first member was ready")


def _report_when_done(builder: subprocess.Popen) -> None:
    def wait() -> None:
        code = builder.wait()
        logging.getLogger("effx_serve.demo").log(logging.INFO if code == 0 else logging.ERROR,
                                                 "the demo build %s", "finished" if code == 0 else f"stopped (exit {code}); the members so far go on serving")

    threading.Thread(target=wait, name="demo-build", daemon=True).start()


def settings_from(args: argparse.Namespace) -> ServerSettings:
    repository = Path(args.repo)
    if not (repository / "manifest.json").is_file():
        raise UserError(f"{repository} has no manifest.json; build a repository first: effx-serve build-repo --demo")
    dispatch = DispatchSettings(max_queue=args.max_queue, default_policy=args.default_policy, costing=args.costing,
                                default_deadline_ms=args.default_deadline_ms, decode_budget_ms=args.decode_budget_ms, lane_nice=args.lane_nice,
                                start_headroom=args.start_headroom,
                                cpu_lanes=args.cpu_lanes or _lanes_per_worker(resolve_workers(args)[0] if args.workers == AUTO else args.workers))
    return ServerSettings(repository=repository, backend=args.backend, triton_url=args.triton_url, triton_protocol=args.triton_protocol,
                          triton_ready_timeout_s=args.triton_timeout, family=args.family, dispatch=dispatch,
                          max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels, max_images=args.max_images,
                          max_in_flight=args.max_in_flight, max_bodies_bytes=int(args.max_bodies_mb * 2**20),
                          body_timeout_s=args.body_timeout_s, watch_s=_watch_interval(args))


_worker_count = checked(int, lambda value: value >= 1, "a whole number or auto", "at least 1")


def _workers(text: str) -> int | str:
    return AUTO if text == AUTO else _worker_count(text)


def resolve_workers(args: argparse.Namespace) -> tuple[int, str]:
    """`--workers auto`: how many, and why (serve/workers.py's rule, from this machine and the backend)."""
    building = args.demo and needs_demo_build(Path(args.repo))
    return auto_workers(available_cpus(), args.backend == "onnxruntime" and _onnxruntime_on_cpu(), building)


def _onnxruntime_on_cpu() -> bool:
    from effx_serve.hardware.detect import detect
    from effx_serve.serve.backends.onnxruntime import onnxruntime_runtime

    return onnxruntime_runtime(detect().hw_class)[0] == "onnxruntime"


def _lanes_per_worker(workers: int) -> int | None:
    """Each of several workers takes its share of the cores; one process takes them all (None: the dispatcher's default)."""
    return max(1, available_cpus() // workers) if workers > 1 else None


def _watch_interval(args: argparse.Namespace) -> float:
    if args.watch_s is not None:
        return args.watch_s
    return DEMO_WATCH_S if args.demo else 0.0


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers == AUTO:
        args.workers, why = resolve_workers(args)
        print(f"--workers auto: {args.workers} ({why})", flush=True)
    if args.workers > 1 and args.worker is None:
        return _supervise(args)
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    map_large_allocations()  # memory that large images took goes back to the OS after them
    # The web stack is imported only here: every other command would pay half a second for it.
    import uvicorn

    from effx_serve.serve.http.pending import PendingApp
    from effx_serve.serve.http.protocol import limited_protocol
    from effx_serve.serve.http.shared_port import SharedPortServer

    repository = Path(args.repo)
    builder = start_demo_build(repository) if args.demo and needs_demo_build(repository) and args.worker is None else None
    worker = None if args.worker is None else WorkerLink(args.worker)
    try:
        if builder is None:
            app = _serving_app(args, worker=worker)
        else:  # the port answers at once (503, saying what is building) and serves from the first member on
            print(f"http://{args.host}:{args.port}/readyz answers 503 until the first member is ready", flush=True)
            app = PendingApp(lambda stop: _serving_app(args, builder, stop), "the demo build is training its first member (b0)")
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                                http=limited_protocol(args.head_timeout_s),  # limits on a head: serve/http/protocol.py
                                timeout_keep_alive=args.keep_alive_s)
        if worker is None:
            web = uvicorn.Server(config)
        else:  # one of several on the port, taking its share of the connections (serve/http/shared_port.py)
            web = SharedPortServer(config, socket.socket(fileno=worker.spec.fd), ConnectionCounts(worker.spec.folder, worker.spec.index),
                                   can_serve=lambda: app.state.server.problem() is None)
        if isinstance(app, PendingApp):
            app.on_failure = lambda error: setattr(web, "should_exit", True)
        else:
            app.state.server.on_lasting_failure = lambda reason: setattr(web, "should_exit", True)
        try:
            web.run()
        except KeyboardInterrupt:  # uvicorn shut down gracefully on Ctrl-C or SIGTERM (main's), then re-raised it: done
            pass
        if isinstance(app, PendingApp) and app.error is not None:
            raise app.error
        if not isinstance(app, PendingApp) and app.state.server.lasting_failure is not None:
            raise UserError(f"startup failed: {app.state.server.lasting_failure}")
        if not web.started:
            raise UserError(f"the server could not listen on {args.host}:{args.port}; its log is above")
    finally:
        if builder is not None and builder.poll() is None:
            print("stopping the demo build (the next 'serve --demo' resumes it)", flush=True)
            stop(builder)
    return 0


def _supervise(args: argparse.Namespace) -> int:
    """`--workers N`: listen here and run N worker processes of this same command on the socket (serve/workers.py)."""
    repository = Path(args.repo)
    if args.demo and needs_demo_build(repository):
        raise UserError(f"{repository} is not built yet, and --workers needs it built; run `effx-serve serve --demo` once "
                        "(one process), or `effx-serve build-repo --demo`, then --workers")
    from effx_serve.serve.server import Server

    settings = settings_from(args)
    Server(settings)  # a bad repository or option (an unknown family) is reported once, here, not by every worker
    lanes = settings.dispatch.cpu_lanes
    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        raise UserError(f"the server could not listen on {args.host}:{args.port}: {error.strerror or error}") from None
    print(f"{args.workers} workers on http://{args.host}:{args.port} (each with its own event loop and "
          f"{lanes} lane(s)); /metrics counts them all", flush=True)
    with sock:
        return supervise(lambda spec: [sys.executable, "-m", "effx_serve.cli", *args.argv, "--workers", str(args.workers), "--worker", str(spec)],
                         args.workers, sock)


def _serving_app(args: argparse.Namespace, builder: subprocess.Popen | None = None, stop: threading.Event | None = None,
                 worker: WorkerLink | None = None):
    """The HTTP app over a Server on `args.repo`, once the demo `builder` (if any) has written its first member."""
    from effx_serve.serve.http.app import create_app
    from effx_serve.serve.server import Server

    if builder is not None:
        wait_for_first_member(Path(args.repo), builder, stop)
        _report_when_done(builder)
    server = Server(settings_from(args))
    building = f"; {server.catalog.building}" if server.catalog.building else ""
    print(f"serving {len(server.catalog.members)} members of {server.settings.repository} (family {server.catalog.family}) "
          f"on {server.hardware.id} with {server.backend.kind}: http://{args.host}:{args.port}/docs{building}", flush=True)
    for note in server.notes:
        print(f"note: {note}", flush=True)
    return create_app(server, worker)


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="serve HTTP image classification, each request routed to the fastest member meeting its SLA")
    p.add_argument("--repo", default=DEFAULT_REPOSITORY, help="model repository with manifest.json (default: %(default)s)")
    p.add_argument("--demo", action="store_true",
                   help="when --repo is missing (or a partial demo build), build the demo repository in the background and serve its "
                        "members as they are ready: b0 in minutes, the rest as LACS and training finish (implies --watch-s 2)")
    p.add_argument("--watch-s", type=_watch_s, default=None,
                   help="look at the repository's manifest this often and serve a rebuilt repository without a restart "
                        "(default: 0, never; 2 with --demo)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="onnxruntime: in this process (default); triton: a Triton server")
    p.add_argument("--triton-url", default="127.0.0.1:8000", help="Triton's HTTP (or gRPC) address, host:port (default: %(default)s)")
    p.add_argument("--triton-protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--triton-timeout", type=float, default=60.0, help="seconds to wait for Triton to be ready at start (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="listen address; 0.0.0.0 for every interface (default: %(default)s)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--family", help="family served when a request pins none (default: the one for the detected hardware)")
    p.add_argument("--default-policy", choices=POLICIES, default="most_accurate", help="for requests without an SLA (default: %(default)s)")
    p.add_argument("--max-queue", type=positive_int, default=256, help="images waiting per member before 429 (default: %(default)s)")
    p.add_argument("--default-deadline-ms", type=_deadline_ms, default=1000.0,
                   help="requests without a latency bound are scheduled as if due this long after arrival: behind tighter ones, "
                        "never starved (default: %(default)s)")
    p.add_argument("--costing", choices=COSTINGS, default="device",
                   help="device: expected latency counts every member's work on the device, decoding and the HTTP edge (default); "
                        "member: the member's own queue and profile only (the old costing, to measure the difference)")
    p.add_argument("--max-body-mb", type=_megabytes, default=10.0, help="largest request body in MiB (default: %(default)s)")
    p.add_argument("--max-pixels", type=positive_int, default=ServerSettings.max_pixels,
                   help="largest image, width x height, read from its header before decoding (default: %(default)s, 4096 x 4096)")
    p.add_argument("--decode-budget-ms", type=_deadline_ms, default=DispatchSettings.decode_budget_ms,
                   help="CPU time a request's images may take to decode, checked as they decode; beyond it 400 (default: %(default)s)")
    p.add_argument("--cpu-lanes", type=positive_int, default=None,
                   help="images decoded and CPU batches run at once (default: the cores this process may use)")
    p.add_argument("--lane-nice", type=_nice, default=DispatchSettings.lane_nice,
                   help="nice levels the decoding and inference lanes run below the event loop: when every core is busy, answers, "
                        "refusals and routing go first; 0: the same priority; Linux only (default: %(default)s)")
    p.add_argument("--start-headroom", type=_headroom, default=DispatchSettings.start_headroom,
                   help="a request with a latency bound starts decoding (or its batch runs) only while its expected run time, times "
                        "1 + this, fits before its deadline; one that would only just fit is refused at once (429 deadline) "
                        "rather than answered late (default: %(default)s)")
    p.add_argument("--workers", type=_workers, default=AUTO,
                   help="server processes on the port, each with its own event loop and cores / workers lanes: more throughput "
                        "where one process's interpreter lock is the limit (docs/serving-measurements.md); limits such as --max-in-flight "
                        "apply per worker; auto: one per core when the models run on this host's CPU, else 1 (default: %(default)s)")
    p.add_argument("--worker", type=WorkerSpec.parse, help=argparse.SUPPRESS)  # set by the supervisor: FD,INDEX,SUPERVISOR_PID,FOLDER
    p.add_argument("--max-images", type=positive_int, default=64, help="most images in one batch request (default: %(default)s)")
    p.add_argument("--max-in-flight", type=positive_int, default=256,
                   help="requests inside the server at once, counted once their body has arrived, before 429 (default: %(default)s)")
    p.add_argument("--max-bodies-mb", type=_megabytes, default=256.0,
                   help="request bodies held at once, arriving or being served, in MiB across requests, before 429 (default: %(default)s)")
    p.add_argument("--body-timeout-s", type=_seconds, default=30.0,
                   help="a request's body must arrive within this; slower senders get 408 and are closed (default: %(default)s)")
    p.add_argument("--head-timeout-s", type=_seconds, default=10.0,
                   help="a request's line and headers must arrive within this from their first byte; else 408 and closed (default: %(default)s)")
    p.add_argument("--keep-alive-s", type=_seconds, default=5.0,
                   help="an idle kept-alive connection is closed after this (default: %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("--switch-interval-ms", type=_switch_ms, default=SWITCH_INTERVAL_MS,
                   help="how long a thread may keep Python's interpreter lock while another waits for it (Python's own is 5): "
                        "the event loop and the decoding and inference lanes take turns at this pace (default: %(default)s)")
    p.set_defaults(func=cmd_serve)
