"""Local processes: the CPUs this process may use, a free port, a server started and awaited until ready, stopped.

One way for every part of the project (the local tritonserver, benchmarks, load tests, tests) to start a
server in a child process: its output goes to a log file, and `running` yields only once the server's
readiness URL answers 200, or raises with the log's tail when it exits or is not ready in time.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from effx_serve.core.errors import UserError


def available_cpus() -> int:
    """The CPUs this process may use, at least 1: its affinity mask (taskset, a container's cpuset), or fewer when its
    cgroup has a CPU quota (a container's `--cpus`), which the mask does not show: lanes and workers sized from the mask
    would share a quota of 2 CPUs on a 64-core host 64 ways."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, int(quota)) if quota is not None else cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: str | None = None) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (quota / period), the tightest over its cgroup and their
    ancestors; None when unlimited or unknown. cgroup v2's cpu.max, or v1's cpu.cfs_quota_us and cpu.cfs_period_us.
    `membership`: /proc/self/cgroup's text. Inside a container its own cgroup is mounted as the root, so the walk up from
    the path the file names (absent there) reaches it."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas = []
    for line in membership.splitlines():
        if line.count(":") < 2:  # not a cgroup line (the kernel writes ID:CONTROLLERS:PATH)
            continue
        _, controllers, path = line.split(":", 2)
        if controllers and "cpu" not in controllers.split(","):
            continue
        base = root if not controllers else next((root / name for name in (controllers, "cpu,cpuacct", "cpu") if (root / name).is_dir()), None)
        if base is None:
            continue
        folder = base / path.lstrip("/")
        while True:
            quota = _cpu_quota(folder)
            if quota is not None:
                quotas.append(quota)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(quotas) if quotas else None


def _cpu_quota(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


MAX_NICE = 19


def lower_thread_priority(levels: int) -> int | None:
    """Lower the calling thread's CPU priority by `levels` nice steps (at most to 19): when the cores are all busy, the
    process's other threads run first. Linux keeps a nice value per thread (setpriority on the thread's id); elsewhere a
    thread's id may name another process, so nothing is done there. The new value, or None when nothing changed."""
    if levels <= 0 or not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        value = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, thread) + levels)
        os.setpriority(os.PRIO_PROCESS, thread, value)
    except OSError:
        return None
    return value


def map_large_allocations(threshold_bytes: int = 4 * 2**20) -> bool:
    """Have glibc's malloc serve every block of at least `threshold_bytes` with its own mmap, given back to the OS when
    freed. By default the threshold rises to the size of each large block freed (up to 32 MiB), after which such blocks
    come from the heap of the thread that decoded them and stay in the process: a burst of large images left a server
    at 3x its idle memory for good. False where there is no glibc (nothing changes)."""
    libc = _glibc()
    return bool(libc.mallopt(-3, threshold_bytes)) if libc else False  # M_MMAP_THRESHOLD (malloc.h); fixing it stops the rise


def trim_free_memory() -> bool:
    """Give the pages malloc holds free back to the OS (glibc's malloc_trim, which also releases free pages inside its
    heaps: thousands of freed 64 KiB request chunks stay there otherwise). A few ms; False where there is no glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc else False


def _glibc():
    """glibc, when this process runs on it (its malloc tuning functions exist); else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Ask a child process to end (SIGTERM), kill it if it has not within `grace_s`, and reap it."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def not_ready(url: str, timeout_s: float = 5.0) -> str | None:
    """None when GET `url` answers 200, else why not: the status and the start of the body, or the connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return None if answer.status == 200 else f"answered {answer.status}"
    except urllib.error.HTTPError as error:
        return f"answered {error.code}: {error.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"cannot connect ({getattr(error, 'reason', error)})"


def wait_ready(url: str, timeout_s: float, process: subprocess.Popen | None = None, poll_s: float = 0.2) -> str | None:
    """None once GET `url` answers 200 within `timeout_s`, else why it never did (or that `process` exited first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reason = not_ready(url)
        if reason is None:
            return None
        if process is not None and process.poll() is not None:
            return f"exited with code {process.returncode} before {url} answered"
        if time.monotonic() >= deadline:
            return f"{url} was not ready within {timeout_s:g} s: {reason}"
        time.sleep(poll_s)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ending_with_parent(parent: int | None = None) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child SIGTERM when this process (or `parent`, when a child calls it
    itself) ends, however it ends (kill -9 included): a child that must not outlive its parent (Linux's parent-death
    signal); None where there is no glibc. The signal comes when the thread that started the child ends: start it from
    one that lives as long as the process."""
    libc, parent = _glibc(), parent or os.getpid()
    if libc is None or not sys.platform.startswith("linux"):
        return None

    def arrange() -> None:
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG (linux/prctl.h)
        if os.getppid() != parent:  # the parent ended before the signal was arranged
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def pinned(cpus: Collection[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps a child process (and its threads) on `cpus`; None for no limit."""
    if not cpus:
        return None
    return functools.partial(os.sched_setaffinity, 0, set(cpus))


def each(*steps: Callable[[], None] | None) -> Callable[[], None] | None:
    """One `preexec_fn` that runs every one of `steps` given (None: none given)."""
    given = [step for step in steps if step is not None]
    if not given:
        return None

    def run() -> None:
        for step in given:
            step()

    return run


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def running(argv: Sequence[str], ready_url: str, log: Path, timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, grace_s: float = 15.0, cpus: Collection[int] | None = None) -> Iterator[subprocess.Popen]:
    """Run `argv` (output to `log`; on `cpus` only, if given) until the block ends; yields the process once `ready_url` answers 200.

    A UserError with the log's last lines when it exits or is not ready within `timeout_s`.
    """
    with open(log, "wb") as output:
        process = subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, env=None if env is None else dict(env), cwd=cwd,
                                   preexec_fn=each(pinned(cpus), ending_with_parent()))  # no server outlives its user, killed or not
    try:
        problem = wait_ready(ready_url, timeout_s, process)
        if problem is not None:
            raise UserError(f"{Path(argv[0]).name} {problem}:\n{log_tail(log)}")
        yield process
    finally:
        stop(process, grace_s)
