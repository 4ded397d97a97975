"""Several server processes on one port: the supervisor's restarts and shutdown, the workers' published metrics."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from effx_serve.core.proc import free_port, pid_alive, running
from effx_serve.serve import workers
from effx_serve.serve.metrics import ServerMetrics
from effx_serve.serve.workers import WorkerLink, WorkerSpec
from tests.helpers import JPEG

# A stand-in worker: publishes like a real one, then does what it is told (per worker index, from the environment).
FAKE_WORKER = """
import os, sys, time
from effx_serve.serve.workers import WorkerLink, WorkerSpec
link = WorkerLink(WorkerSpec.parse(sys.argv[1]))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(f"{link.name} {os.getpid()}\\n")
plan = os.environ.get(f"FAKE_PLAN_{link.name}", "serve")
if plan == "crash" and os.environ["FAKE_ONCE"] not in open(os.environ["FAKE_LOG"]).read():  # it holds connections, then crashes
    from effx_serve.serve.workers import ConnectionCounts
    ConnectionCounts(link.spec.folder, link.spec.index).set(7)
    open(os.environ["FAKE_LOG"] + ".folder", "w").write(str(link.spec.folder))
if plan == "fail":
    sys.exit(5)
if plan == "crashloop":  # serves, then dies at once, every time
    link.publish({"families": {}, "gauges": {}})
    time.sleep(0.2)
    sys.exit(3)
started = time.monotonic()
while True:
    if plan in ("hang", "crash") and time.monotonic() - started > 0.6 and os.environ.get("FAKE_ONCE") not in open(os.environ["FAKE_LOG"]).read():
        with open(os.environ["FAKE_LOG"], "a") as log:
            log.write(f"{os.environ['FAKE_ONCE']}\\n")
        if plan == "crash":
            sys.exit(3)
        time.sleep(3600)  # stuck: no more heartbeats
    link.publish({"families": {}, "gauges": {}})
    time.sleep(0.1)
"""


def _supervised(tmp_path, monkeypatch, plans: dict[int, str], workers_n: int = 2, hang_s: float = 1.5):
    """Run the supervisor over fake workers in a thread; (stop event, the thread, what it returned, the log file)."""
    script, log = tmp_path / "fake_worker.py", tmp_path / "workers.log"
    script.write_text(FAKE_WORKER)
    log.touch()
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_ONCE", "done")
    for index, plan in plans.items():
        monkeypatch.setenv(f"FAKE_PLAN_{index}", plan)
    sock = workers.listen("127.0.0.1", 0)
    stop, result = threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(workers.supervise(lambda spec: [sys.executable, str(script), str(spec)],
                                                                              workers_n, sock, hang_s, stop)))
    thread.start()
    return stop, thread, result, log, sock


def _pids(log: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in log.read_text().split("\n"):
        if " " in line:
            name, pid = line.split()
            found.setdefault(name, []).append(int(pid))
    return found


def _left_alive(log: Path) -> list[int]:
    return [pid for pids in _pids(log).values() for pid in pids if pid_alive(pid)]


def _eventually(condition, timeout_s: float = 15.0) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["crash", "hang"])
def test_a_worker_that_crashes_or_hangs_is_replaced_and_shutdown_leaves_no_process(tmp_path, monkeypatch, plan):
    stop, thread, result, log, sock = _supervised(tmp_path, monkeypatch, {0: plan})
    try:
        assert _eventually(lambda: len(_pids(log).get("0", [])) == 2), log.read_text()  # the first worker 0, then its replacement
        first, second = _pids(log)["0"]
        assert _eventually(lambda: not pid_alive(first))
        assert pid_alive(second) and len(_pids(log)["1"]) == 1  # worker 1 went on, untouched
        if plan == "crash":  # the dead worker's connections are no longer counted; its replacement counts once it takes some
            folder = Path(f"{log}.folder").read_text()
            assert workers.ConnectionCounts(Path(folder), 1).count(0) == workers.ConnectionCounts.ABSENT
    finally:
        stop.set()
        thread.join(30)
    assert result == [0]
    assert sock.fileno() == -1  # closed before the workers stop: new connections are refused, not reset in its queue
    assert not _left_alive(log)


@pytest.mark.slow
@pytest.mark.parametrize(("plans", "status", "worker_0_starts"), [
    ({1: "fail"}, 5, None),  # worker 1 exits before it ever served: a start that cannot work
    # Both serve, then die within EARLY_S, each time: stopped once one has died EARLY_DEATHS times with none serving.
    ({0: "crashloop", 1: "crashloop"}, 3, workers.EARLY_DEATHS),
])
def test_a_worker_that_cannot_start_or_keeps_dying_stops_the_server_with_its_status(tmp_path, monkeypatch, plans, status, worker_0_starts):
    stop, thread, result, log, sock = _supervised(tmp_path, monkeypatch, plans)
    thread.join(60)
    assert result == [status] and not thread.is_alive()
    assert worker_0_starts is None or len(_pids(log)["0"]) >= worker_0_starts
    assert not _left_alive(log)


@pytest.mark.slow
def test_a_worker_that_keeps_dying_while_another_serves_is_started_again_later_and_the_server_stays_up(tmp_path, monkeypatch):
    # As when the repository is broken while it is served (--watch-s): a restarted worker cannot load it, the other
    # goes on with the last good one, and the restarted one comes back once the repository is mended.
    monkeypatch.setattr(workers, "RETRY_S", 1.0)
    stop, thread, result, log, sock = _supervised(tmp_path, monkeypatch, {0: "crashloop"})
    try:
        assert _eventually(lambda: len(_pids(log).get("0", [])) > workers.EARLY_DEATHS, 30), log.read_text()
        assert thread.is_alive() and len(_pids(log)["1"]) == 1  # worker 1 served throughout
    finally:
        stop.set()
        thread.join(30)
    assert result == [0]
    assert not _left_alive(log)


def test_a_worker_whose_supervisor_is_gone_stops_itself(tmp_path):
    spec = WorkerSpec(0, 0, os.getpid() + 10**6, tmp_path)  # a supervisor that is not its parent: gone
    code = "import asyncio, sys\nfrom effx_serve.serve.workers import WorkerLink, WorkerSpec\n" \
           "asyncio.run(WorkerLink(WorkerSpec.parse(sys.argv[1])).run(lambda: {}))\nimport time; time.sleep(30)"
    process = subprocess.run([sys.executable, "-c", code, str(spec)], timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert WorkerSpec.parse(str(spec)) == spec


def test_a_scrape_sums_every_workers_counts_and_shows_live_workers_gauges(tmp_path):
    mine, live, dead = ServerMetrics(), ServerMetrics(), ServerMetrics()
    for metrics, requests in ((mine, 1), (live, 2), (dead, 4)):
        metrics.requests.labels("b0", "classify", "200").inc(requests)
        metrics.request_seconds.labels("b0").observe(0.003 * requests)
        metrics.ready.set(1)
    dead.requests.labels("b1", "classify", "429").inc()
    peers = [json.loads(json.dumps(live.snapshot())) | {"worker": "1", "live": True},
             json.loads(json.dumps(dead.snapshot())) | {"worker": "2", "live": False}]
    text = mine.render(peers, "0").decode()
    assert 'effx_requests_total{endpoint="classify",member="b0",status="200"} 7.0' in text  # the dead worker's counts stay
    assert 'effx_requests_total{endpoint="classify",member="b1",status="429"} 1.0' in text
    assert 'effx_request_seconds_count{member="b0"} 3.0' in text and 'effx_request_seconds_sum{member="b0"} 0.021' in text
    assert 'effx_ready{worker="0"} 1.0' in text and 'effx_ready{worker="1"} 1.0' in text and 'worker="2"' not in text
    assert "\neffx_ready 1.0\n" in mine.render().decode()  # one process: no worker label


def test_peers_are_the_other_workers_files_and_a_half_written_one_is_skipped(tmp_path):
    links = [WorkerLink(WorkerSpec(0, index, os.getppid(), tmp_path)) for index in range(2)]
    links[1]._file = tmp_path / "worker-1.json"  # two links in one process: their own files
    links[0].publish({"families": {}, "gauges": {}})
    links[1].publish({"families": {}, "gauges": {}})
    (tmp_path / "worker-2.json").write_text('{"worker": ')  # caught mid-replace (cannot happen: os.replace), or corrupt
    peers = links[0].peers()
    assert [(p["worker"], p["live"]) for p in peers] == [("1", True)]
    assert not links[0].orphaned()


@pytest.mark.slow
def test_two_workers_serve_one_port_count_together_and_survive_one_being_killed(served_repository, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "effx_serve.cli", "serve", "--repo", str(served_repository), "--port", str(port), "--workers", "2"]

    def classify() -> int:
        request = urllib.request.Request(f"{base}/v1/classify", data=JPEG, headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status

    with running(argv, f"{base}/readyz", tmp_path / "serve.log", 180) as supervisor:
        workers_now = lambda: [int(p) for p in Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text().split()]  # noqa: E731
        assert _eventually(lambda: len(workers_now()) == 2)
        assert [classify() for _ in range(6)] == [200] * 6
        time.sleep(2 * workers.PUBLISH_S)
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("effx_requests_total{"))
        assert served == 6, metrics
        victim = workers_now()[0]
        os.kill(victim, signal.SIGKILL)
        assert _eventually(lambda: len(workers_now()) == 2 and victim not in workers_now(), 60)
        assert [classify() for _ in range(4)] == [200] * 4
        survivors = workers_now()
    assert not [pid for pid in survivors if pid_alive(pid)]  # the supervisor stopped: so did every worker


@pytest.mark.parametrize(("cores", "on_host_cpu", "building", "expected"), [
    (2, True, False, 2), (16, True, False, 16), (1, True, False, 1),  # one per core when the models run on this CPU
    (8, False, False, 1),  # a GPU or a Triton server: one scheduler sees its queue whole
    (8, True, True, 1),  # the demo building: one process serves it as it is written
])
def test_auto_workers_are_one_per_core_only_where_the_models_run_on_this_cpu(cores, on_host_cpu, building, expected):
    count, why = workers.auto_workers(cores, on_host_cpu, building)
    assert count == expected and why


def test_a_supervisor_removes_the_folders_that_killed_supervisors_left_and_keeps_live_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(workers.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".{workers.FOLDER}.{dead.pid}.abc{workers.FOLDER_SUFFIX}"
    live = tmp_path / f".{workers.FOLDER}.{os.getpid()}.def{workers.FOLDER_SUFFIX}"
    other = tmp_path / f".{workers.FOLDER}.not-a-pid{workers.FOLDER_SUFFIX}"
    for folder in (left, live, other):
        folder.mkdir()
        (folder / "connections").write_bytes(b"x")
    stop, thread, result, log, sock = _supervised(tmp_path, monkeypatch, {}, workers_n=1)
    stop.set()
    thread.join(30)
    assert result == [0] and not left.exists() and live.exists() and other.exists()
