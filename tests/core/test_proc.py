"""effx_serve.core.proc: a free port, waiting for readiness (with the reason when it never comes), a child process
started, awaited and always stopped."""

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from effx_serve.core import proc
from effx_serve.core.errors import UserError


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"warming up" if self.status != 200 else b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def readiness():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    server.shutdown()
    _Readiness.status = 503


def test_wait_ready_returns_once_ready_and_says_why_not_otherwise(readiness):
    problem = proc.wait_ready(readiness, 0.3, poll_s=0.05)
    assert problem.startswith(f"{readiness} was not ready within 0.3 s: answered 503: warming up")
    threading.Timer(0.2, lambda: setattr(_Readiness, "status", 200)).start()
    assert proc.wait_ready(readiness, 10, poll_s=0.05) is None
    closed = f"http://127.0.0.1:{proc.free_port()}/readyz"
    assert "cannot connect" in proc.wait_ready(closed, 0.2, poll_s=0.05)


def test_running_yields_a_ready_process_and_stops_it(tmp_path):
    port = proc.free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with proc.running(argv, f"http://127.0.0.1:{port}/", tmp_path / "server.log", timeout_s=30) as process:
        assert process.poll() is None
    assert process.returncode is not None  # stopped and reaped when the block ended


def test_running_keeps_a_process_on_the_cpus_it_is_given(tmp_path):
    import os

    cpu = max(os.sched_getaffinity(0))
    port = proc.free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with proc.running(argv, f"http://127.0.0.1:{port}/", tmp_path / "server.log", timeout_s=30, cpus={cpu}) as process:
        assert os.sched_getaffinity(process.pid) == {cpu}
    assert proc.pinned(None) is None and proc.pinned(set()) is None


def test_a_process_that_exits_early_is_one_error_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad config: no models'); sys.exit(3)"]
    with pytest.raises(UserError, match=r"(?s)exited with code 3 before .* answered:.*bad config: no models"):
        with proc.running(argv, f"http://127.0.0.1:{proc.free_port()}/", tmp_path / "log", timeout_s=30):
            pass


def test_stop_kills_a_process_that_ignores_sigterm():
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('up', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    stubborn.stdout.readline()
    started = time.monotonic()
    proc.stop(stubborn, grace_s=0.5)
    assert stubborn.returncode == -9 and time.monotonic() - started < 10


def _nice(thread_id=0):
    return os.getpriority(os.PRIO_PROCESS, thread_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_lower_thread_priority_lowers_the_calling_thread_only_and_stops_at_19():
    own = _nice(threading.get_native_id())
    seen = {}

    def lowered(levels):
        seen[levels] = (proc.lower_thread_priority(levels), _nice(threading.get_native_id()))

    for levels in (3, 40, 0):
        thread = threading.Thread(target=lowered, args=(levels,))
        thread.start()
        thread.join()
    assert seen[3] == (min(19, own + 3), min(19, own + 3))
    assert seen[40] == (19, 19)
    assert seen[0] == (None, own)  # nothing asked, nothing changed
    assert _nice(threading.get_native_id()) == own  # the caller's own thread is untouched


def test_lower_thread_priority_does_nothing_where_a_thread_id_is_not_linuxs(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")  # a thread's id there may be another process's: never renice it
    before = _nice()
    assert proc.lower_thread_priority(5) is None and _nice() == before


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_cgroup_cpu_quota_is_read_from_v2_and_v1_the_tightest_up_the_tree(tmp_path):
    v2 = tmp_path / "v2"
    _write(v2, {"cpu.max": "200000 100000\n"})  # a container: its own cgroup mounted as the root
    assert proc.cgroup_cpu_quota(v2, "0::/\n") == 2.0
    _write(v2 / "system.slice", {"cpu.max": "150000 100000\n"})
    _write(v2 / "system.slice" / "app.scope", {"cpu.max": "max 100000\n"})  # unlimited itself, limited by its parents
    assert proc.cgroup_cpu_quota(v2, "0::/system.slice/app.scope\n") == 1.5
    v1 = tmp_path / "v1"
    _write(v1 / "cpu,cpuacct", {"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"})
    # Inside a v1 container the named path is absent: the walk up reaches the container's own, mounted as the root.
    assert proc.cgroup_cpu_quota(v1, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n") == 3.0
    _write(v1 / "cpu,cpuacct", {"cpu.cfs_quota_us": "-1\n"})
    assert proc.cgroup_cpu_quota(v1, "4:cpu,cpuacct:/\n") is None  # no quota
    _write(v2, {"cpu.max": "junk\n"})
    assert proc.cgroup_cpu_quota(v2, "0::/\n") is None and proc.cgroup_cpu_quota(tmp_path / "none", "0::/\n") is None
    assert proc.cgroup_cpu_quota(v1, "garbage\n\n") is None  # not cgroup lines: no quota known, no traceback


def test_available_cpus_are_the_affinity_mask_cut_to_a_cgroup_quota(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(proc, "cgroup_cpu_quota", lambda: None)
    assert proc.available_cpus() == cores
    monkeypatch.setattr(proc, "cgroup_cpu_quota", lambda: 0.5)  # half a CPU: still one lane
    assert proc.available_cpus() == 1
    monkeypatch.setattr(proc, "cgroup_cpu_quota", lambda: cores + 10.0)  # a quota above the mask changes nothing
    assert proc.available_cpus() == cores
