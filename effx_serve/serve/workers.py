"""Several server processes on one port (`serve --workers N`; by default one per core where the models run on the host's
CPU, `auto_workers`): each its own event loop, lanes and interpreter lock.

Why: one process serves at most what its interpreter lock lets through. On 2 cores, 40x40 JPEGs to b0 used 1.3 of
the cores at ~490 img/s; two processes used both and served ~680 (docs/serving-measurements.md, benchmarks/serving.py with
--serve-arg=--workers=2). Each worker schedules its own share of the cores (cores / workers lanes) and learns its
corrections from what it observes, the other workers' load included.

The supervisor (`supervise`, the process the user started) listens, starts the workers with the socket, and restarts
one that dies or stops answering. A worker (`WorkerLink`) publishes its metrics every PUBLISH_S into a folder the
supervisor owns, atomically; that file is also its heartbeat. The worker that answers a scrape adds up everyone's.
A worker whose supervisor is gone stops itself, so no worker outlives it.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from effx_serve.core.fs import remove_left_by_dead_writers

log = logging.getLogger(__name__)
PUBLISH_S = 1.0
HANG_S = 30.0  # a worker that has not published for this long is stuck (its event loop blocked): killed and restarted
STOP_GRACE_S = 15.0  # what a worker has to finish its requests at shutdown before it is killed
EARLY_DEATHS = 3  # a worker that dies this many times in a row within EARLY_S of starting stops the server (unless others serve)
EARLY_S = 30.0
RETRY_S = 10.0  # how often such a worker is started again while the other workers serve
# The folder a supervisor shares with its workers, in the temporary folder: `.effx-workers.<pid>.<random>.workers`, named
# as core.fs names what a writer is working on, so that a killed supervisor's is removed by the next one.
FOLDER = "effx-workers"
FOLDER_SUFFIX = ".workers"


def auto_workers(cores: int, on_host_cpu: bool, building: bool) -> tuple[int, str]:
    """`serve --workers auto` (the default): (workers, why). One per core when the models run on this host's CPU, where one
    process is bounded by its interpreter lock: on 2 cores two workers served 19-29% more images/s than one process and kept
    more requests within their SLAs at the same load (docs/serving-measurements.md). One for a GPU or a Triton server (one device, whose
    queue one scheduler should see whole), and while the demo repository builds (one process serves it as it is written)."""
    if building:
        return 1, "the demo repository is building (one process serves it as it is written; a restart once it is built runs one per core)"
    if not on_host_cpu:
        return 1, "the models run on one accelerator or a Triton server, whose queue one scheduler sees whole"
    if cores < 2:
        return 1, "one core"
    return cores, "one per core: the models run on this host's CPU"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told on its command line (`--worker FD,INDEX,SUPERVISOR_PID,FOLDER`)."""

    fd: int
    index: int
    supervisor: int
    folder: Path

    def __str__(self) -> str:
        return f"{self.fd},{self.index},{self.supervisor},{self.folder}"

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        fd, index, supervisor, folder = text.split(",", 3)
        return cls(int(fd), int(index), int(supervisor), Path(folder))


def _published(folder: Path, pid: int) -> Path:
    """The file the worker `pid` publishes its metrics (and so its heartbeat) into."""
    return folder / f"worker-{pid}.json"


class ConnectionCounts:
    """Every worker's open connections, one int64 each in a file the supervisor makes and every worker maps: a worker
    holding more than another leaves a new connection to it for a moment (serve/http/shared_port.py). ABSENT marks a
    worker not taking connections (starting, stopped or dead); one standing aside (it cannot serve now) adds ABSENT to its
    count, which goes on counting. Advisory: a stale count costs a connection one deferral."""

    ABSENT = 2**62
    FILE = "connections"

    def __init__(self, folder: Path, index: int):
        with open(folder / self.FILE, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        self._slots = memoryview(self._map).cast("q")
        self.index = index

    @classmethod
    def create(cls, folder: Path, workers: int) -> None:
        (folder / cls.FILE).write_bytes(array.array("q", [cls.ABSENT] * workers).tobytes())  # native order, as the mapping reads it

    def set(self, count: int, index: int | None = None) -> None:
        self._slots[self.index if index is None else index] = count

    def count(self, index: int | None = None) -> int:
        return self._slots[self.index if index is None else index]

    def add(self, delta: int) -> None:
        self._slots[self.index] += delta

    def more_than_another(self) -> bool:
        mine = self._slots[self.index]
        return any(count < mine for index, count in enumerate(self._slots) if index != self.index)

    def taking(self, index: int | None = None) -> bool:
        return self.count(index) < self.ABSENT // 2

    def another_taking(self) -> bool:
        return any(self.taking(index) for index in range(len(self._slots)) if index != self.index)

    def stand_aside(self, aside: bool) -> None:
        """Mark this worker as leaving new connections to the others (or taking them again); its count goes on."""
        if aside == self.taking():
            self.add(self.ABSENT if aside else -self.ABSENT)


class WorkerLink:
    """A worker's side: its metrics published (its heartbeat), its peers' read, its supervisor watched."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self.name = spec, str(spec.index)
        self._file = _published(spec.folder, os.getpid())

    def publish(self, snapshot: dict) -> None:
        """Replace this worker's file (readers see the old or the new one; no fsync: the folder lives as long as the server)."""
        partial = self._file.with_name(f".{self._file.name}.tmp")
        partial.write_text(json.dumps({"worker": self.name, "pid": os.getpid(), **snapshot}))
        os.replace(partial, self._file)

    def peers(self) -> list[dict]:
        """Every other worker's last snapshot (those of workers that have died too: their counts stay in the totals), each
        with `live`: published within the last few periods."""
        now, found = time.time(), []
        for path in self.spec.folder.glob("worker-*.json"):
            if path == self._file:
                continue
            try:
                snapshot = json.loads(path.read_text())
                snapshot["live"] = now - path.stat().st_mtime < 3 * PUBLISH_S
            except (OSError, ValueError):  # gone, or being replaced: the next scrape has it
                continue
            found.append(snapshot)
        return found

    def orphaned(self) -> bool:
        return os.getppid() != self.spec.supervisor

    async def run(self, snapshot: Callable[[], dict]) -> None:
        """Publish every PUBLISH_S on the event loop (a blocked loop stops publishing: the supervisor sees it); stop the
        process (SIGTERM, uvicorn's graceful shutdown) once the supervisor is gone."""
        while True:
            self.publish(snapshot())
            if self.orphaned():
                log.error("worker %s: the supervisor has gone; stopping", self.name)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(PUBLISH_S)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Worker:
    def __init__(self, index: int) -> None:
        self.index, self.process, self.started, self.early_deaths, self.served = index, None, 0.0, 0, False
        self.retry_at = 0.0  # when a worker that kept dying is started again (0: not waiting)

    def heartbeat(self, folder: Path) -> float | None:
        try:
            return _published(folder, self.process.pid).stat().st_mtime
        except OSError:
            return None

    def serving(self, folder: Path) -> bool:
        beat = None if self.process is None or self.process.poll() is not None else self.heartbeat(folder)
        return beat is not None and time.time() - beat < 3 * PUBLISH_S


def supervise(argv: Callable[[WorkerSpec], Sequence[str]], workers: int, sock: socket.socket, hang_s: float = HANG_S,
              stop: threading.Event | None = None) -> int:
    """Run `workers` processes (`argv(spec)`) on `sock` until SIGTERM or SIGINT (or `stop`), restarting one that exits or stops
    publishing for `hang_s`; 0, or a failing worker's exit status when one cannot start (dies before its first heartbeat,
    or EARLY_DEATHS times in a row soon after starting while no other worker serves; while others do, it is started
    again every RETRY_S: a repository broken while it is served, say, mended later)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    remove_left_by_dead_writers(Path(tempfile.gettempdir()) / FOLDER, FOLDER_SUFFIX)
    with tempfile.TemporaryDirectory(prefix=f".{FOLDER}.{os.getpid()}.", suffix=FOLDER_SUFFIX) as folder_name:
        folder = Path(folder_name)
        pool = [_Worker(index) for index in range(workers)]
        ConnectionCounts.create(folder, workers)
        counts = ConnectionCounts(folder, 0)

        def start(worker: _Worker) -> None:
            spec = WorkerSpec(sock.fileno(), worker.index, os.getpid(), folder)
            worker.process = subprocess.Popen(list(argv(spec)), pass_fds=(sock.fileno(),), start_new_session=True)
            worker.started = time.monotonic()

        for worker in pool:
            start(worker)
        try:
            while not stop.wait(PUBLISH_S / 2):
                for worker in pool:
                    if worker.retry_at:
                        if time.monotonic() >= worker.retry_at:
                            worker.retry_at = 0.0
                            start(worker)
                        continue
                    failed = _check(worker, folder, hang_s, any(other.serving(folder) for other in pool if other is not worker))
                    if failed:
                        return failed
                    if worker.process.poll() is not None:
                        counts.set(ConnectionCounts.ABSENT, worker.index)  # its connections died with it
                        if not worker.retry_at:
                            start(worker)
        finally:
            sock.close()  # new connections are refused from now on, not left to a backlog no worker reads any more
            _stop_all([worker.process for worker in pool])
    return 0


def _check(worker: _Worker, folder: Path, hang_s: float, others_serving: bool) -> int:
    """Kill `worker` if stuck; the exit status to stop the server with when it cannot start, else 0 (restart it if it ended,
    at once or at its `retry_at`)."""
    process, beat = worker.process, worker.heartbeat(folder)
    worker.served = worker.served or beat is not None
    code = process.poll()
    if code is None:
        if beat is not None and time.time() - beat > hang_s:
            log.error("worker %d (pid %d) has not answered for %.0f s; killing and restarting it", worker.index, process.pid, hang_s)
            process.kill()
            process.wait()
        return 0
    status = code if code > 0 else 128 - code if code < 0 else 1  # killed by signal N: 128 + N, as a shell says it
    if not worker.served:
        log.error("worker %d exited (status %s) before it ever served; stopping", worker.index, code)
        return status
    worker.early_deaths = worker.early_deaths + 1 if time.monotonic() - worker.started < EARLY_S else 0
    if worker.early_deaths >= EARLY_DEATHS:
        if others_serving:
            log.error("worker %d died %d times in a row within %.0f s of starting (status %s); the other workers serve, and it "
                      "is started again in %.0f s", worker.index, EARLY_DEATHS, EARLY_S, code, RETRY_S)
            worker.early_deaths, worker.retry_at = 0, time.monotonic() + RETRY_S
            return 0
        log.error("worker %d died %d times in a row within %.0f s of starting (status %s); stopping", worker.index, EARLY_DEATHS, EARLY_S, code)
        return status
    log.error("worker %d (pid %d) exited (status %s); restarting it", worker.index, process.pid, code)
    return 0


def _stop_all(processes: list[subprocess.Popen | None]) -> None:
    """SIGTERM to every worker (each finishes its requests), SIGKILL to those still running after STOP_GRACE_S."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.terminate()
    until = time.monotonic() + STOP_GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
