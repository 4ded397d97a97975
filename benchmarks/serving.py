"""What the HTTP router costs over raw ONNX Runtime on this machine: per-request overhead and served throughput.

    .venv/bin/python benchmarks/serving.py [--member NAME] [--backends onnxruntime,triton] [--duration 3] [--json OUT.json]

Every member of --repo (default model_repository; or one --member) on every backend, with one 640x480 photo-like
JPEG (smooth gradients, shapes, mild noise; quality 90; another size with --image-size, e.g. 40x40 to see what the
server costs with almost no decoding), measured side by side in one run:

1. Router overhead = p50 end-to-end latency of POST /v1/classify?member=NAME (real HTTP over localhost to
   `effx-serve serve` with its defaults (one worker per core on a CPU host) apart from this process; a keep-alive client, one request at a time) MINUS p50 of
   ONNX Runtime session.run at batch 1 on the same model.onnx in this process, with the thread settings of the
   server's backend (ThreadSettings.fit). Target <= 2 ms. The medians of the server's own `timing` (read,
   decode, queue, inference, serialise, total) and of this process's decode + preprocessing of the same JPEG explain it.
2. Served throughput at saturation = the best images/s over several in-flight counts (--concurrency) of a load
   generator in a separate process (asyncio, raw HTTP/1.1 keep-alive connections), DIVIDED BY the ceiling: the
   images/s the cores allow for decoding (this process's p50 for the JPEG) and inference (raw ONNX Runtime at its
   best batch of 1, 4, 16 on pre-made tensors, in this process, same thread settings) alone, with zero HTTP cost.
   Target >= 0.85. The ratio to raw ONNX Runtime is printed beside it. The row `batch16` sends 16 images per request to /v1/classify/batch (--batch-concurrency), which
   amortises HTTP. The load generator competes with the server for the same cores: the CPU it, the server (and
   tritonserver) used is printed per level, in cores.
3. The same through the Triton backend: `effx-serve serve --backend triton` in front of the tritonserver that
   nvidia-pytriton ships (Python backend only), on a python-backend repository built by `effx-serve build-repo
   --triton-backend python` into a temporary folder from the demo run (--demo-run; cached exports make it quick),
   or the one given with --triton-repo. The in-process reference is the same model.onnx (checked by sha256).

4. What the HTTP stack costs and what it allows, in the same run: uvicorn as `serve` configures it in front of a bare
   ASGI app that answers a canned answer of the router's (its CPU per request, and the load generator's), and, for every
   member right after the router's rows, the simplest server of that stack: the same uvicorn, the member's decoding and
   inference inline on the event loop, one process per CPU on one port, no routing, queues, lanes, SLAs or limits.
   Served throughput over the simplest server's is the router's own cost; the simplest server over the ceiling is what
   HTTP, the load generator on the same cores and this VM's scheduling leave of it.

`--server-code DIR` runs the router from another checkout (a worktree of another commit): the same command with it
and without, in turn, compares two commits' servers against the same references.

With the defaults (--duration 3, three single-image and three batch concurrency levels) one member takes about a
minute on both backends and all four demo members about five. Exit status 0 when every single-image row meets
both targets. Measure on a quiet machine: anything else on these cores lowers the served figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

from effx_serve.cli.common import output_file, positive_float, run_script
from effx_serve.core import proc
from effx_serve.core.fs import sha256_file
from effx_serve.core.photos import synthetic_photo
from effx_serve.core.proc import available_cpus

OVERHEAD_TARGET_MS = 2.0
CEILING_TARGET = 0.85  # served img/s over the decode + inference ceiling
RAW_BATCHES = (1, 4, 16)
REQUEST_BATCH = 16  # images per /v1/classify/batch request
HOST = "127.0.0.1"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


# --- the load generator (run in its own process: `serving.py --load-generator SPEC.json`; stdlib only) -------------

def _ticks(pid: int, thread: int | None = None) -> int | None:
    """utime + stime of one process (or of one of its threads) in clock ticks; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _tree(pid: int) -> list[int]:
    """pid and its descendants (tritonserver's Python-backend stubs are its children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def _busy_ticks() -> int:
    """Ticks every core of the machine spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # minus idle and iowait


def _cpu_snapshot(watch: dict[str, list[int]]) -> dict:
    # A router process's main thread runs its event loop (HTTP, parsing, routing, answers): the one part that cannot spread
    # over cores, so it is counted apart ("loop": summed over the processes, one per --workers; decoding and inference
    # run on other threads).
    loop = {"loop": sum(_ticks(pid, pid) or 0 for pid in watch["server"])} if "server" in watch else {}
    return {"t": time.perf_counter(), "system": _busy_ticks(), "client": _ticks(os.getpid()) or 0,
            **{name: sum(_ticks(pid) or 0 for pid in pids) for name, pids in watch.items()}, **loop}


async def _generate(spec: dict) -> dict:
    request = Path(spec["request_file"]).read_bytes()
    concurrency, images = spec["concurrency"], spec["images_per_request"]
    watch = {name: _tree(pid) for name, pid in spec["watch"].items()}
    begin = time.perf_counter()
    start, stop = begin + spec["warmup_s"], begin + spec["warmup_s"] + spec["duration_s"]
    finished: list[tuple[float, float, int, dict | None]] = []  # (done at, latency, status, timing)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(HOST, spec["port"])
        try:
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                if length is None:
                    raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
                body = await reader.readexactly(int(length.group(1)))
                done = time.perf_counter()
                status = int(head[9:12])
                timing = None
                if start <= done <= stop and status == 200:
                    answer = json.loads(body)
                    timing = dict(answer["timing"], batch_size=answer.get("batch_size") or
                                  statistics.median(r["batch_size"] for r in answer["results"]))
                finished.append((done, done - sent, status, timing))
        finally:
            writer.close()

    async def snapshot_at(when: float) -> dict:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        return _cpu_snapshot(watch)

    snapshots = asyncio.gather(snapshot_at(start), snapshot_at(stop))
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    first, last = await snapshots
    window = [f for f in finished if start <= f[0] <= stop]
    ok = [f for f in window if f[2] == 200]
    errors: dict[str, int] = {}
    for f in window:
        if f[2] != 200:
            errors[str(f[2])] = errors.get(str(f[2]), 0) + 1
    elapsed, hz = last["t"] - first["t"], os.sysconf("SC_CLK_TCK")
    cores = {name: (last[name] - first[name]) / hz / elapsed for name in last if name != "t"}
    timings = [f[3] for f in ok]
    return {"concurrency": concurrency, "requests": len(ok), "images_per_s": len(ok) * images / spec["duration_s"],
            "p50_ms": 1e3 * statistics.median(f[1] for f in ok) if ok else None, "errors": errors, "cores": cores,
            "server_timing": {key: statistics.median(t[key] for t in timings) for key in timings[0]} if timings else {}}


def load_generator(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    print(json.dumps(asyncio.run(_generate(spec))))
    return 0


# --- the HTTP stack alone, and the simplest server (run in its own process: `serving.py --bare-server SPEC.json`) ----

def bare_server(spec_file: str) -> int:
    """uvicorn as `effx-serve serve` configures it (httptools with the same head limits, uvloop, the same keep-alive), in
    front of an ASGI app that reads each request's body whole and answers with a canned answer of the router's: what
    serving an HTTP request costs on this machine before any routing, decoding or inference. With a member in the spec,
    the app also decodes the image and runs the model inline, on the event loop, before answering: the simplest server
    of this stack (no routing, queues, threads or SLAs), one process of several sharing the port."""
    import uvicorn

    from effx_serve.serve.http.protocol import limited_protocol

    spec = json.loads(Path(spec_file).read_text())
    answer, ready = Path(spec["answer_file"]).read_bytes(), b'{"status":"ready"}'
    infer = _inline_inference(spec["repo"], spec["member"]) if spec.get("member") else None

    async def app(scope, receive, send) -> None:
        body, more = [], True
        while more:
            message = await receive()
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        if infer is not None and scope["method"] == "POST":
            infer(b"".join(body))
        reply = answer if scope["method"] == "POST" else ready
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # several processes on one port: the kernel spreads connections
    listener.bind((HOST, spec["port"]))
    listener.listen(1024)  # from here on connections queue for this process: say so (the port's readyz may be another's)
    Path(spec_file).with_name(f"listening-{os.getpid()}").touch()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http=limited_protocol(),
                            timeout_keep_alive=5)  # `serve`'s defaults
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _inline_inference(repo: str, name: str):
    """Member `name`'s decoding (as the server decodes) and ONNX Runtime run (the server backend's session options), in one call."""
    from effx_serve.hardware.detect import detect
    from effx_serve.serve import catalog as catalog_io
    from effx_serve.serve.backends.onnxruntime import OnnxRuntimeBackend

    member = catalog_io.load(Path(repo), detect().id, "onnxruntime").members[name]
    session, decode = OnnxRuntimeBackend(detect().hw_class).session(member), server_decoder(member)

    def infer(data: bytes) -> None:
        session.run([member.output_name], {member.input_name: decode(data)[None]})

    return infer


# --- the benchmark -------------------------------------------------------------------------------------------------

def multipart(image: bytes, count: int) -> tuple[bytes, str]:
    boundary = "effx-benchmark-boundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n"
    return part * count + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def http_request(port: int, path: str, body: bytes, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def timed_loop(call, duration_s: float, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        call()
    times, stop = [], time.perf_counter() + duration_s
    while True:
        started = time.perf_counter()
        call()
        done = time.perf_counter()
        times.append(done - started)
        if done >= stop:
            return times


def server_decoder(member):
    """Image bytes -> `member`'s model input, as the server decodes them (its default limits)."""
    from effx_serve.core import preprocess
    from effx_serve.serve.settings import ServerSettings

    defaults = ServerSettings(Path("."))
    return lambda data: preprocess.serving_input(data, member.resolution, defaults.max_pixels, defaults.formats, defaults.min_side)


class InProcess:
    """Raw ONNX Runtime on one model.onnx with the server backend's session settings, and the server's decode."""

    def __init__(self, member, image: bytes, duration_s: float):

        import numpy as np

        from effx_serve.hardware.detect import detect
        from effx_serve.serve.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(detect().hw_class)  # its session(): the very options the server's sessions get
        session, self.threads = backend.session(member), backend.threads
        decode_bytes = server_decoder(member)

        def decode() -> np.ndarray:
            return decode_bytes(image)

        self.decode_p50_ms = median_ms(timed_loop(decode, min(1.0, duration_s)))
        one = decode()
        self.p50_ms, self.images_per_s = {}, {}
        for batch in RAW_BATCHES:
            feed = {member.input_name: np.ascontiguousarray(np.repeat(one[None], batch, axis=0))}
            times = timed_loop(lambda feed=feed: session.run([member.output_name], feed), duration_s)
            self.p50_ms[batch] = median_ms(times)
            self.images_per_s[batch] = batch * len(times) / sum(times)
        self.best_batch = max(self.images_per_s, key=self.images_per_s.get)
        self._decode, self._run = decode, lambda: session.run([member.output_name], {member.input_name: one[None]})

    def from_idle(self, pause_s: float, duration_s: float) -> tuple[float, float]:
        """p50 ms of decoding then inference at batch 1, as a server's lane does them for one request at a time: each
        pair after this thread slept `pause_s`. On a VM a thread that slept a few milliseconds runs its next work up to
        several times slower than in a tight loop (caches and predictors lost to whatever ran meanwhile): a cost every
        server pays at rest, that the tight-loop p50s above leave out."""
        decodes, runs = [], []
        stop = time.perf_counter() + duration_s
        while time.perf_counter() < stop or len(runs) < 20:
            time.sleep(pause_s)
            started = time.perf_counter()
            self._decode()
            decoded = time.perf_counter()
            self._run()
            decodes.append(decoded - started)
            runs.append(time.perf_counter() - decoded)
        return median_ms(decodes), median_ms(runs)


def checkout(value: str) -> Path:
    """An argparse type: a checkout of this project (a worktree of another commit) for a server to run."""
    folder = Path(value)
    if not (folder / "effx_serve").is_dir():
        raise argparse.ArgumentTypeError(f"{folder} has no effx_serve/: give a checkout (e.g. git worktree add /tmp/old <commit>)")
    return folder


def code_env(code: Path | None) -> dict[str, str] | None:
    """The environment for a `python -m` server that runs the checkout at `code` instead of this one (None: this one).
    (`python -m` puts the working folder, this checkout when run from its root, ahead of PYTHONPATH on sys.path;
    PYTHONSAFEPATH leaves it off.)"""
    return None if code is None else {**os.environ, "PYTHONPATH": str(code.resolve()), "PYTHONSAFEPATH": "1"}


@contextmanager
def router(repo: Path, extra: list[str], log_dir: Path, timeout_s: float = 180.0, cpus: set[int] | None = None,
           code: Path | None = None):
    """`effx-serve serve` on `repo` in its own process (on `cpus` only, if given; running the checkout at `code`, if
    given) until the block ends; yields (port, process) once /readyz is 200."""
    port = proc.free_port()
    argv = [sys.executable, "-m", "effx_serve.cli", "serve", "--repo", str(repo), "--host", HOST, "--port", str(port),
            "--log-level", "warning", *extra]
    with proc.running(argv, f"http://{HOST}:{port}/readyz", log_dir / f"serve-{port}.log", timeout_s, env=code_env(code), cpus=cpus) as process:
        yield port, process


def members_by_latency(port: int) -> list[str]:
    """The members of the server on `port`, shortest profiled batch-1 latency first (its /v1/models)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/v1/models") as answer:
        return [m["name"] for m in sorted(json.load(answer)["members"], key=lambda m: m["profile"][0]["p50_ms"])]


def fastest_member(port: int) -> str:
    return members_by_latency(port)[0]


def read_answer(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes, bytes]:
    """One HTTP/1.1 answer from a blocking socket, `buffer` what an earlier read took beyond its answer: (head, body,
    what this read took beyond this answer)."""
    while b"\r\n\r\n" not in buffer:
        buffer += _received(sock)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    found = _LENGTH.search(head + b"\r\n")
    if found is None:
        raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
    length = int(found.group(1))
    while len(buffer) < length:
        buffer += _received(sock)
    return head, buffer[:length], buffer[length:]


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection before its answer was complete")
    return data


def latency(port: int, path: str, image: bytes, duration_s: float) -> dict:
    """One request at a time on one keep-alive connection (a blocking socket: the least client work per request)."""
    request = http_request(port, path, image, "image/jpeg")
    timings: list[dict] = []
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""

        def call() -> None:
            nonlocal buffer
            sock.sendall(request)
            head, body, buffer = read_answer(sock, buffer)
            if head[9:12] != b"200":
                raise RuntimeError(f"POST {path} answered {head[:200]!r}: {body[:300]!r}")
            timings.append(body)

        times = timed_loop(call, duration_s)
    answers = [json.loads(body)["timing"] for body in timings[-len(times):]]
    return {"p50_ms": median_ms(times), "requests": len(times),
            "server_timing": {key: statistics.median(a[key] for a in answers) for key in answers[0]}}


def one_answer(port: int, path: str, image: bytes) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(f"http://{HOST}:{port}{path}", data=image, headers={"Content-Type": "image/jpeg"})) as answer:
        return answer.read()


def load(port: int, request: bytes, images: int, concurrency: int, duration_s: float, watch: dict[str, int], work: Path) -> dict:
    request_file, spec_file = work / "request.bin", work / "load.json"
    request_file.write_bytes(request)
    spec_file.write_text(json.dumps({"port": port, "request_file": str(request_file), "images_per_request": images,
                                     "concurrency": concurrency, "warmup_s": min(1.0, duration_s / 3), "duration_s": duration_s,
                                     "watch": watch}))
    result = subprocess.run([sys.executable, __file__, "--load-generator", str(spec_file)], capture_output=True, text=True, timeout=120 + 2 * duration_s)
    if result.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def serve_rows(member, backend: str, port: int, image: bytes, reference: InProcess, args, watch: dict[str, int], work: Path, say) -> list[dict]:
    path = f"/v1/classify?member={member.name}"
    say(f"{member.name} on {backend}: latency, one request at a time")
    single = latency(port, path, image, args.duration)
    # As one request at a time reaches the server, its lane sleeps about as long as a request takes between two of them.
    idle_decode_ms, idle_inference_ms = reference.from_idle(single["p50_ms"] / 1e3, args.duration)
    levels = []
    for concurrency in args.concurrency:
        say(f"{member.name} on {backend}: /v1/classify with {concurrency} in flight")
        levels.append(load(port, http_request(port, path, image, "image/jpeg"), 1, concurrency, args.duration, watch, work))
    body, content_type = multipart(image, REQUEST_BATCH)
    batch_request = http_request(port, f"/v1/classify/batch?member={member.name}", body, content_type)
    batch_levels = []
    for concurrency in args.batch_concurrency:
        say(f"{member.name} on {backend}: /v1/classify/batch ({REQUEST_BATCH} images) with {concurrency} in flight")
        batch_levels.append(load(port, batch_request, REQUEST_BATCH, concurrency, args.duration, watch, work))
    raw = reference.images_per_s[reference.best_batch]
    pipeline_ms = reference.decode_p50_ms + 1e3 / raw  # CPU per image that no server can avoid: decode and inference
    ceiling = 1e3 * available_cpus() / pipeline_ms  # what the cores allow with zero HTTP cost
    rows = []
    for endpoint, http_p50, inproc_p50, timing, measured in (
            ("classify", single["p50_ms"], reference.p50_ms[1], single["server_timing"], levels),
            (f"batch{REQUEST_BATCH}", next((lv["p50_ms"] for lv in batch_levels if lv["concurrency"] == 1), None), reference.p50_ms[REQUEST_BATCH],
             next((lv["server_timing"] for lv in batch_levels if lv["concurrency"] == 1), {}), batch_levels)):
        best = max(measured, key=lambda lv: lv["images_per_s"])
        overhead = None if http_p50 is None else http_p50 - inproc_p50
        rows.append({"member": member.name, "backend": backend, "endpoint": endpoint, "http_p50_ms": http_p50, "inprocess_p50_ms": inproc_p50,
                     "inprocess_batch": 1 if endpoint == "classify" else REQUEST_BATCH, "overhead_ms": overhead,
                     "overhead_ok": None if endpoint != "classify" else overhead <= OVERHEAD_TARGET_MS,
                     "served_images_per_s": best["images_per_s"], "served_concurrency": best["concurrency"],
                     "server_cpu_ms_per_image": 1e3 * best["cores"]["server"] / best["images_per_s"],
                     "raw_images_per_s": raw, "raw_batch": reference.best_batch, "ratio": best["images_per_s"] / raw,
                     "of_ceiling": best["images_per_s"] / ceiling, "of_ceiling_ok": best["images_per_s"] / ceiling >= CEILING_TARGET,
                     "server_timing_p50_ms": timing,
                     "decode_inprocess_p50_ms": reference.decode_p50_ms, "levels": measured,
                     # what no server of this JPEG and model can avoid is decoding it: the router's own share is the rest
                     "overhead_beyond_decode_ms": overhead - reference.decode_p50_ms if endpoint == "classify" and overhead is not None else None,
                     "idle_decode_p50_ms": idle_decode_ms if endpoint == "classify" else None,
                     "idle_inference_p50_ms": idle_inference_ms if endpoint == "classify" else None,
                     "latency_requests": single["requests"] if endpoint == "classify" else None, "cpus": available_cpus(),
                     "pipeline_cpu_ms_per_image": pipeline_ms, "pipeline_ceiling_images_per_s": ceiling})
    return rows


def bare(answer: bytes, image: bytes, args, work: Path, say, repo: Path | None = None, member: str | None = None) -> dict:
    """`bare_server` under the same load generator at each --concurrency: the HTTP stack alone, or with `member` the simplest
    server of it (one process per CPU); its best rate, and the CPU per request there of the server(s) and of the load
    generator."""
    port, processes = proc.free_port(), available_cpus() if member else 1
    (work / "answer.json").write_bytes(answer)
    (work / "bare.json").write_text(json.dumps({"port": port, "answer_file": str(work / "answer.json"), "repo": str(repo), "member": member}))
    argv, levels = [sys.executable, __file__, "--bare-server", str(work / "bare.json")], []
    with ExitStack() as running:
        pids = [running.enter_context(proc.running(argv, f"http://{HOST}:{port}/readyz", work / f"bare-{i}.log")).pid for i in range(processes)]
        give_up = time.monotonic() + 60  # the port answers once one listens: wait for every one before the load connects
        while not all((work / f"listening-{pid}").exists() for pid in pids):
            if time.monotonic() > give_up:
                raise RuntimeError("a bare server did not listen within 60 s:\n" + "\n".join(proc.log_tail(work / f"bare-{i}.log") for i in range(processes)))
            time.sleep(0.05)
        for concurrency in args.concurrency:
            say(f"{f'the simplest server of {member}' if member else 'the HTTP stack alone'}: /v1/classify with {concurrency} in flight")
            levels.append(load(port, http_request(port, "/v1/classify", image, "image/jpeg"), 1, concurrency, args.duration,
                               {"server": pids[0]} if processes == 1 else {f"server{i}": pid for i, pid in enumerate(pids)}, work))
    best = max(levels, key=lambda lv: lv["images_per_s"])
    server_cores = sum(value for name, value in best["cores"].items() if name.startswith("server"))
    return {"processes": processes, "requests_per_s": best["images_per_s"], "concurrency": best["concurrency"],
            "server_cpu_ms": 1e3 * server_cores / best["images_per_s"], "client_cpu_ms": 1e3 * best["cores"]["client"] / best["images_per_s"],
            "levels": levels}


def print_floor(rows: list[dict], floor: dict) -> None:
    print(f"\nthe HTTP stack alone (uvicorn, httptools and uvloop as `serve` runs them, a canned answer), the same load generator and "
          f"JPEG: {floor['requests_per_s']:.0f} requests/s at {floor['concurrency']} in flight; CPU per request: server "
          f"{floor['server_cpu_ms']:.2f} ms, load generator {floor['client_cpu_ms']:.2f} ms")
    print("the simplest server of that stack (decoding and inference inline on the event loop, one process per CPU, a canned "
          "answer: no routing, queues, lanes, SLAs or limits) against the router, img/s at the best of the same in-flight counts:")
    print(f"{'member':15s} {'ceiling':>8s} {'simplest':>8s} {'of ceiling':>10s} {'router':>7s} {'of ceiling':>10s} {'router/simplest':>15s}  "
          "CPU ms per image: simplest, router")
    for r in rows:
        simplest = r.get("simplest")
        if simplest:
            print(f"{r['member']:15s} {r['pipeline_ceiling_images_per_s']:8.0f} {simplest['requests_per_s']:8.0f} "
                  f"{simplest['requests_per_s'] / r['pipeline_ceiling_images_per_s']:10.2f} {r['served_images_per_s']:7.0f} {r['of_ceiling']:10.2f} "
                  f"{r['served_images_per_s'] / simplest['requests_per_s']:15.2f}  {simplest['server_cpu_ms']:.2f}, {r['server_cpu_ms_per_image']:.2f}")


def build_triton_repo(args, dataset: str, out: Path, say) -> Path:
    if args.triton_repo:
        return Path(args.triton_repo)
    demo = Path(args.demo_run)
    family, checkpoints = demo / "lacs" / "family.json", demo / "checkpoints"
    if not family.is_file() or not checkpoints.is_dir():
        raise RuntimeError(f"no demo run at {demo} ({family} and {checkpoints}) to build the python-backend repository from; "
                           "give one with --demo-run or a built repository with --triton-repo")
    say(f"building a python-backend repository for the local tritonserver in {out}")
    argv = [sys.executable, "-m", "effx_serve.cli", "build-repo", "--family", str(family), "--checkpoints", str(checkpoints),
            "--out", str(out), "--triton-backend", "python", "--dataset-name", dataset]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"effx-serve build-repo failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return out


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mark(ok) -> str:
    return "" if ok is None else ("ok" if ok else "FAIL")


def print_table(rows: list[dict]) -> None:
    print(f"\n{'member':15s} {'backend':11s} {'endpoint':8s} {'HTTP p50':>9s} {'in-proc p50':>11s} {'overhead':>9s} {'<=2ms':>5s} "
          f"{'served img/s':>12s} {'(N)':>5s} {'ceiling':>7s} {'of it':>6s} {'>=0.85':>6s} {'raw ORT img/s':>13s} {'(b)':>4s} {'of raw':>6s}")
    for r in rows:
        print(f"{r['member']:15s} {r['backend']:11s} {r['endpoint']:8s} {fmt(r['http_p50_ms'], '9.2f')} "
              f"{fmt(r['inprocess_p50_ms'], '8.2f')} b{r['inprocess_batch']:<2d} {fmt(r['overhead_ms'], '9.2f')} {mark(r['overhead_ok']):>5s} "
              f"{r['served_images_per_s']:12.0f} {r['served_concurrency']:5d} {r['pipeline_ceiling_images_per_s']:7.0f} {r['of_ceiling']:6.2f} "
              f"{mark(r['of_ceiling_ok']):>6s} {r['raw_images_per_s']:13.0f} {r['raw_batch']:4d} {r['ratio']:6.2f}")
    print("(HTTP p50 and in-process p50 in ms; in-proc p50 at batch b1 for /v1/classify, b16 for a 16-image /v1/classify/batch request;\n"
          " N: requests in flight at the best served rate; ceiling: img/s the cores allow for decode + inference alone, zero HTTP;\n"
          " b: the best raw batch of ONNX Runtime on pre-made tensors)")


def print_details(rows: list[dict]) -> None:
    print("\nwhere the time goes (medians, ms) and the load levels (img/s, p50 ms, CPU in cores: "
          "server = the router process(es), loop = their event-loop threads (a part of server), triton = tritonserver and its stubs, "
          "client = the load generator, all = the whole machine)")
    for r in rows:
        t = r["server_timing_p50_ms"]
        head = f"{r['member']} {r['backend']} {r['endpoint']}:"
        if t:
            outside = None if r["http_p50_ms"] is None else r["http_p50_ms"] - t["total_ms"]
            print(f"  {head} server read {t['read_ms']:.2f} + route {t.get('route_ms', float('nan')):.2f} + decode {t['decode_ms']:.2f} + queue "
                  f"{t['queue_ms']:.2f} + inference {t['inference_ms']:.2f} + hand-back {t.get('handback_ms', float('nan')):.2f} + serialise "
                  f"{t['serialize_ms']:.2f} -> total {t['total_ms']:.2f} in the handler (p50 each); HTTP, ASGI and client outside it "
                  f"{fmt(outside, '.2f')}; "
                  f"this process decodes the JPEG in {r['decode_inprocess_p50_ms']:.2f}")
            if r["endpoint"] == "classify":
                print(f"    overhead beyond decoding the JPEG as this process does (HTTP p50 - in-process decode p50 - inference p50): "
                      f"{fmt(r['overhead_beyond_decode_ms'], '.2f')} ms")
                idle = r["idle_decode_p50_ms"] + r["idle_inference_p50_ms"]
                print(f"    from idle (each after sleeping one HTTP p50, as a lane between requests one at a time), this process "
                      f"decodes in {r['idle_decode_p50_ms']:.2f} and infers in {r['idle_inference_p50_ms']:.2f} (in a tight loop "
                      f"{r['decode_inprocess_p50_ms']:.2f} and {r['inprocess_p50_ms']:.2f}): HTTP p50 beyond them {r['http_p50_ms'] - idle:.2f} ms")
                print(f"    decode + inference at the best raw batch alone take {r['pipeline_cpu_ms_per_image']:.2f} ms CPU per image: "
                      f"at most {r['pipeline_ceiling_images_per_s']:.0f} img/s on {r['cpus']} cores even with zero HTTP cost "
                      f"({r['pipeline_ceiling_images_per_s'] / r['raw_images_per_s']:.2f} x raw)")
        else:
            print(f"  {head}")
        for lv in r["levels"]:
            st = lv["server_timing"]
            cores = " ".join(f"{name} {value:.2f}" for name, value in lv["cores"].items() if name != "system") + f" all {lv['cores']['system']:.2f}"
            errors = f" errors {lv['errors']}" if lv["errors"] else ""
            extra = (f"; server decode {st['decode_ms']:.2f} queue {st['queue_ms']:.2f} inference {st['inference_ms']:.2f} "
                     f"batch {st['batch_size']:.0f}") if st else ""
            per_image = " + ".join(f"{name} {1e3 * lv['cores'][name] / lv['images_per_s']:.2f}" for name in ("server", "loop", "triton")
                                   if name in lv["cores"] and lv["images_per_s"] > 0)
            print(f"    N={lv['concurrency']:<3d} {lv['images_per_s']:7.0f} img/s  p50 {fmt(lv['p50_ms'], '7.2f')}  cores: {cores} "
                  f"(CPU ms per image: {per_image}){extra}{errors}")


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and 8 <= int(width) <= 8000 and 8 <= int(height) <= 8000):
        raise argparse.ArgumentTypeError(f"an image size is WIDTHxHEIGHT, 8 to 8000 pixels a side, e.g. 640x480, not '{text}'")
    return int(width), int(height)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--load-generator":
        return load_generator(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-server":
        return bare_server(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default="model_repository", help="the served repository (default: %(default)s)")
    parser.add_argument("--member", help="one member (default: every member of --repo)")
    parser.add_argument("--backends", default="onnxruntime,triton", help="comma-separated, of onnxruntime and triton (default: %(default)s)")
    parser.add_argument("--duration", type=positive_float, default=3.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--concurrency", default="4,16,64", help="requests in flight tried on /v1/classify (default: %(default)s)")
    parser.add_argument("--batch-concurrency", default="1,2,4", help="requests in flight tried on /v1/classify/batch (default: %(default)s)")
    parser.add_argument("--image-size", type=_size, default=(640, 480), metavar="WxH", help="the JPEG sent (default: 640x480)")
    parser.add_argument("--demo-run", default="runs/demo", help="the demo run the Triton repository is built from (default: %(default)s)")
    parser.add_argument("--triton-repo", help="an already built python-backend repository for the Triton rows")
    parser.add_argument("--json", type=output_file, metavar="OUT", help="also write every figure here")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an argument for `effx-serve serve`, e.g. --serve-arg=--switch-interval-ms=1 (repeat for several)")
    parser.add_argument("--server-code", type=checkout, metavar="DIR",
                        help="the router runs the checkout in DIR (a worktree of another commit); this process, its "
                             "in-process references and the simplest server stay this checkout's")
    args = parser.parse_args()
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.batch_concurrency = [int(n) for n in args.batch_concurrency.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("onnxruntime", "triton") for b in backends):
        parser.error(f"--backends takes onnxruntime and/or triton, not '{args.backends}'")
    repo = Path(args.repo)
    if not (repo / "manifest.json").is_file():
        print(f"{repo / 'manifest.json'} is missing: build the repository first (make run, or effx-serve build-repo --demo)", file=sys.stderr)
        return 2
    begin = time.perf_counter()

    def say(line: str) -> None:
        print(f"  [{time.perf_counter() - begin:5.0f} s] {line}", file=sys.stderr, flush=True)

    from effx_serve.hardware.detect import detect
    from effx_serve.repository import triton_local
    from effx_serve.serve import catalog as catalog_io

    hardware = detect()
    catalog = catalog_io.load(repo, hardware.id, "onnxruntime")
    if args.member and args.member not in catalog.members:
        print(f"unknown member '{args.member}'; {repo} has: {', '.join(catalog.members)}", file=sys.stderr)
        return 2
    members = [catalog.members[args.member]] if args.member else sorted(catalog.members.values(), key=lambda m: m.resolution)
    image = synthetic_photo(*args.image_size, "JPEG", quality=90)
    references: dict[str, InProcess] = {}  # by model.onnx sha256
    for member in members:
        say(f"{member.name}: in-process ONNX Runtime at batches {', '.join(map(str, RAW_BATCHES))}")
        references[sha256_file(member.model_path)] = InProcess(member, image, args.duration)
    threads = next(iter(references.values())).threads
    print(f"{hardware.id}, {available_cpus()} CPUs; ONNX Runtime sessions as the server's: intra-op {threads.intra_op} thread(s), "
          f"spinning off; image {args.image_size[0]}x{args.image_size[1]} JPEG q90, {len(image)} bytes; {args.duration:g} s per measurement")
    print(f"load generator: a separate process (asyncio, raw HTTP/1.1 keep-alive) on the same {available_cpus()} cores as the server; "
          "latency: one blocking keep-alive connection in this process")

    rows: list[dict] = []
    floor = None  # the HTTP stack alone, measured with the embedded backend's rows
    with tempfile.TemporaryDirectory(prefix="effx-bench-serving-") as work:
        work = Path(work)
        for backend in backends:
            if backend == "onnxruntime":
                with router(repo, args.serve_arg, work, code=args.server_code) as (port, process):
                    answer = one_answer(port, f"/v1/classify?member={members[0].name}", image)  # what the bare servers answer
                    floor = bare(answer, image, args, work, say)
                    for member in members:
                        measured = serve_rows(member, backend, port, image, references[sha256_file(member.model_path)], args, {"server": process.pid}, work, say)
                        # Right after the router's rows (it idles meanwhile): this VM's speed drifts within minutes.
                        measured[0]["simplest"] = bare(answer, image, args, work, say, repo, member.name)
                        rows += measured
                continue
            triton_repo = build_triton_repo(args, catalog.dataset, work / "triton-repo", say)
            triton_catalog = catalog_io.load(triton_repo, hardware.id, "onnxruntime")
            say(f"starting tritonserver on {triton_repo}")
            with triton_local.serve(triton_repo) as triton, router(triton_repo, ["--backend", "triton", "--triton-url", triton.http_url, *args.serve_arg], work,
                                                                 code=args.server_code) as (port, process):
                for member in members:
                    served = triton_catalog.members.get(member.name)
                    if served is None:
                        say(f"{member.name} is not in {triton_repo}: no Triton row")
                        continue
                    key = sha256_file(served.model_path)
                    if key not in references:
                        say(f"{served.model_path} differs from {member.model_path}: measuring it in-process too")
                        references[key] = InProcess(served, image, args.duration)
                    rows += serve_rows(served, backend, port, image, references[key], args,
                                       {"server": process.pid, "triton": triton.process.pid}, work, say)

    print_table(rows)
    if floor is not None:
        print_floor(rows, floor)
    print_details(rows)
    single = [r for r in rows if r["endpoint"] == "classify"]
    met = all(r["overhead_ok"] and r["of_ceiling_ok"] for r in single)
    print(f"\ntargets (overhead <= {OVERHEAD_TARGET_MS:g} ms, served >= {CEILING_TARGET:g} of the decode + inference ceiling) on every /v1/classify row: "
          f"{'met' if met else 'NOT met'} ({sum(bool(r['overhead_ok']) for r in single)}/{len(single)} overhead, "
          f"{sum(r['of_ceiling_ok'] for r in single)}/{len(single)} throughput); {time.perf_counter() - begin:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"hardware": hardware.id, "cpus": available_cpus(), "image_bytes": len(image), "duration_s": args.duration,
                       "intra_op_threads": threads.intra_op, "targets": {"overhead_ms": OVERHEAD_TARGET_MS, "of_ceiling": CEILING_TARGET},
                       "rows": rows, "http_floor": floor, "met": met}, out, indent=2)
    return 0 if met else 1


if __name__ == "__main__":
    run_script(main)
