"""Hostile clients against a real `effx-serve serve`, at full size: per attack, what the attacker got, how long it
took, the server's memory, and whether a normal client was served meanwhile.

    .venv/bin/python -m loadtest.hostile --repo model_repository [--scale 0.1] [--only scan_bomb ...] [-- SERVE FLAGS]

It starts the server itself (default options in one process, `--workers 1`, plus any flags after `--`), so that it can
read the server's memory from /proc: RSS at idle before the attack, its peak during it (the kernel's high-water mark, reset per attack) and RSS
after. A probe sends a normal 640x480 JPEG every 0.1 s throughout and records its worst latency. Targets, each
printed: every attack answered 4xx or closed (never a 5xx, never a reset before an answer), the probe always served
within 1 s, and the peak within the documented memory ceiling above idle (docs/serving.md). `--scale` shrinks the
counts and sizes (the tests run it at a small scale). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from effx_serve.core import proc
from effx_serve.core.photos import synthetic_photo
from loadtest.attacks import deep_json, png_pixel_bomb, progressive_scan_bomb

CEILING_MB = 1024  # the documented ceiling: RSS above idle at any load with default options (docs/serving.md)
PROBE_BOUND_S = 1.0  # a normal request must be answered within this while an attack runs
PROBE_EVERY_S = 0.1
HOLD_S = 5.0  # how long attacks that hold connections hold them


@dataclass
class Outcome:
    seen: Counter = field(default_factory=Counter)  # an HTTP status, or "closed" / "held" / "reset"

    def add(self, what) -> None:
        self.seen[str(what)] += 1


@dataclass
class Target:
    host: str
    port: int
    scale: float

    def count(self, full: int) -> int:
        return max(1, round(full * self.scale))

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def head(self, path: str = "/v1/classify", length: int | None = None, content_type: str = "image/jpeg", extra: str = "") -> bytes:
        size = f"Content-Length: {length}\r\n" if length is not None else ""
        return f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n{size}{extra}\r\n".encode()

    def exchange(self, data: bytes, outcome: Outcome, timeout: float = 60.0) -> None:
        """Send `data` on a new connection and record the status of the answer (or how the connection ended)."""
        with self.connect(timeout) as sock:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before taking everything: read what it said
            outcome.add(read_status(sock))


def read_status(sock: socket.socket) -> int | str:
    try:
        first = sock.recv(64)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "no answer"
    return _status(first)


def _status(first: bytes) -> int | str:
    """The status code at the start of an answer, or "closed" (no answer)."""
    parts = first.split(b" ", 2)
    return "closed" if not first else int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else "garbled"


# -- the attacks -------------------------------------------------------------------------------------------------------


def stalled_uploads(target: Target) -> Outcome:
    """Connections that send a head announcing 10 MB and 1 KB of it, then nothing: they must not lock others out."""
    outcome = Outcome()
    socks = []
    for _ in range(target.count(256)):
        sock = target.connect()
        sock.sendall(target.head(length=10 * 2**20) + b"\xff\xd8" + b"x" * 1022)
        socks.append(sock)
    time.sleep(HOLD_S)
    for sock in socks:
        outcome.add("held")
        sock.close()
    return outcome


def held_bodies(target: Target) -> Outcome:
    """Connections that send all but the last byte of a 10 MB body and wait: memory for bodies must stay bounded."""
    outcome = Outcome()
    size = max(4096, int(10 * 2**20 * min(1.0, target.scale * 4)))
    body = b"\xff\xd8" + bytes(size - 3)
    socks = []
    for _ in range(target.count(255)):
        sock = target.connect(timeout=HOLD_S)
        try:
            sock.sendall(target.head(length=size) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        socks.append(sock)
    time.sleep(HOLD_S / 2)
    for sock in socks:  # refused ones (429) have answered by now; the rest are still held
        outcome.add(_held_or_answered(sock))
    return outcome


def _held_or_answered(sock: socket.socket) -> int | str:
    """What the server did with a connection it was left holding, without waiting: its status, closed, held or reset."""
    sock.setblocking(False)
    try:
        first = sock.recv(64)
    except BlockingIOError:
        return "held"
    except ConnectionResetError:
        return "reset"
    finally:
        sock.close()
    return _status(first)


def _parallel(work: Callable[[], None], copies: int) -> None:
    threads = [threading.Thread(target=work) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def scan_bomb(target: Target) -> Outcome:
    """Two progressive JPEGs with one refinement scan repeated 1,000 times (41 s of CPU each before the scan limit)."""
    outcome, bomb = Outcome(), progressive_scan_bomb(repeats=max(40, target.count(1000)))  # 40: over the scan limit at any scale
    _parallel(lambda: target.exchange(target.head(length=len(bomb)) + bomb, outcome), 2)
    return outcome


def _multipart(images: list[bytes], content_type: str) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}\"\r\nContent-Type: {content_type}\r\n\r\n"
             .encode() + image + b"\r\n" for i, image in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_batch_bomb(target: Target) -> Outcome:
    """Two batches of 64 16-bit PNGs of 16 MP each (at the pixel limit; a few kilobytes each): the decode budget."""
    outcome = Outcome()
    body, content_type = _multipart([png_pixel_bomb(4096, 4096)] * max(8, target.count(64)), "image/png")  # 8: over the budget
    request = target.head("/v1/classify/batch", len(body), content_type) + body
    _parallel(lambda: target.exchange(request, outcome), 2)
    return outcome


def pixel_limit(target: Target) -> Outcome:
    """A batch of 64 PNGs of 40 MP each: refused from their headers, before any pixel is decoded."""
    outcome = Outcome()
    body, content_type = _multipart([png_pixel_bomb(8000, 5000)] * target.count(64), "image/png")
    target.exchange(target.head("/v1/classify/batch", len(body), content_type) + body, outcome)
    return outcome


def header_bomb(target: Target) -> Outcome:
    """One header of 48 MB (its parsing cost grew quadratically): refused as it arrives."""
    outcome = Outcome()
    target.exchange(target.head(length=0, extra="X-Bomb: " + "a" * int(48 * 2**20 * target.scale) + "\r\n"), outcome)
    return outcome


def many_headers(target: Target) -> Outcome:
    outcome = Outcome()
    target.exchange(target.head(length=0, extra="".join(f"X-{i}: y\r\n" for i in range(10_000))), outcome)
    return outcome


def deep_json_body(target: Target) -> Outcome:
    outcome, body = Outcome(), deep_json(100_000)
    target.exchange(target.head(length=len(body), content_type="application/json") + body, outcome)
    return outcome


def oversized_urllib(target: Target) -> Outcome:
    """A 30 MB upload from Python's urllib, which writes the whole body before reading: it must read the 413."""
    outcome = Outcome()
    request = urllib.request.Request(f"http://{target.host}:{target.port}/v1/classify", data=b"\xff\xd8" + bytes(int(30 * 2**20 * target.scale)),
                                     headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            outcome.add(answer.status)
    except urllib.error.HTTPError as error:
        outcome.add(error.code)
    except (urllib.error.URLError, ConnectionError) as error:
        outcome.add(f"reset ({getattr(error, 'reason', error)})")
    return outcome


def disconnect_flood(target: Target) -> Outcome:
    """Clients that send half a body and go: each is one counted 499, not a traceback, and costs nothing after."""
    outcome = Outcome()
    photo = synthetic_photo()
    for _ in range(target.count(200)):
        with target.connect() as sock:
            sock.sendall(target.head(length=len(photo)) + photo[: len(photo) // 2])
        outcome.add("left")
    return outcome


def idle_connections(target: Target) -> Outcome:
    """2,000 connections that send nothing."""
    outcome = Outcome()
    socks = [target.connect() for _ in range(target.count(2000))]
    time.sleep(HOLD_S)
    for sock in socks:
        outcome.add(_held_or_answered(sock))
    return outcome


def slow_heads(target: Target) -> Outcome:
    """100 clients trickling a head a byte at a time: each gets 408 and is closed after the head timeout."""
    outcome = Outcome()
    head = target.head(length=10)

    def trickle() -> None:
        with target.connect(timeout=30) as sock:
            sock.settimeout(0.5)
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    answered = sock.recv(64)
                except TimeoutError:
                    continue
                outcome.add(_status(answered))
                return
            outcome.add("completed its head")

    _parallel(trickle, target.count(100))
    return outcome


ATTACKS: dict[str, Callable[[Target], Outcome]] = {
    "stalled_uploads": stalled_uploads, "held_bodies": held_bodies, "scan_bomb": scan_bomb, "png_batch_bomb": png_batch_bomb,
    "pixel_limit": pixel_limit, "header_bomb": header_bomb, "many_headers": many_headers, "deep_json": deep_json_body,
    "oversized_urllib": oversized_urllib, "disconnect_flood": disconnect_flood, "idle_connections": idle_connections,
    "slow_heads": slow_heads,
}
ACCEPTED = {"held", "closed", "left"}  # what an attacker may see besides a 4xx


# -- watching the server -----------------------------------------------------------------------------------------------


class Probe:
    """A normal client: one 640x480 JPEG every PROBE_EVERY_S on a new connection; its worst latency and failures."""

    def __init__(self, target: Target):
        self.target, self.photo = target, synthetic_photo()
        self.worst_s, self.failures, self.sent = 0.0, Counter(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection(self.target.host, self.target.port, timeout=30)
                connection.request("POST", "/v1/classify", self.photo, {"Content-Type": "image/jpeg"})
                status = connection.getresponse().status
                connection.close()
            except OSError as error:
                status = type(error).__name__
            took = time.monotonic() - started
            self.sent += 1
            self.worst_s = max(self.worst_s, took)
            if status != 200:
                self.failures[str(status)] += 1
            self._stop.wait(max(0.0, PROBE_EVERY_S - took))


def memory_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and its high-water mark (VmHWM), in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return fields


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the kernel's high-water mark restarts from the current RSS


@dataclass
class Row:
    attack: str
    seen: Counter
    seconds: float
    before_mb: float
    peak_mb: float
    after_mb: float
    probe_worst_s: float
    probe_failures: Counter

    @property
    def misses(self) -> list[str]:
        missed = [f"{what} x{n}" for what, n in self.seen.items() if what not in ACCEPTED and not (what.isdigit() and 400 <= int(what) < 500)]
        if self.probe_worst_s > PROBE_BOUND_S:
            missed.append(f"probe waited {self.probe_worst_s:.2f} s")
        if self.probe_failures:
            missed.append(f"probe failed {dict(self.probe_failures)}")
        if self.peak_mb - self.before_mb > CEILING_MB:
            missed.append(f"peak {self.peak_mb - self.before_mb:.0f} MB above idle")
        return missed


def run(target: Target, pid: int, names: list[str], say: Callable[[str], None] = print) -> list[Row]:
    rows = []
    for name in names:
        time.sleep(1.0)  # settle: what the last attack left running is over
        before = memory_mb(pid)["VmRSS"]
        reset_peak(pid)
        with Probe(target) as probe:
            time.sleep(3 * PROBE_EVERY_S)  # the probe is running before the attack starts
            started = time.monotonic()
            outcome = ATTACKS[name](target)
            seconds = time.monotonic() - started
            time.sleep(3 * PROBE_EVERY_S)
        peak = memory_mb(pid)["VmHWM"]
        time.sleep(2.0)
        row = Row(name, outcome.seen, seconds, before, peak, memory_mb(pid)["VmRSS"], probe.worst_s, probe.failures)
        say(format_row(row))
        rows.append(row)
    return rows


HEADER = ("| attack | attacker saw | s | RSS idle MB | peak MB | after MB | probe worst ms | verdict |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")


def format_row(row: Row) -> str:
    seen = ", ".join(f"{what} x{n}" for what, n in sorted(row.seen.items()))
    verdict = "ok" if not row.misses else "MISSED: " + "; ".join(row.misses)
    return (f"| {row.attack} | {seen} | {row.seconds:.1f} | {row.before_mb:.0f} | {row.peak_mb:.0f} | {row.after_mb:.0f} | "
            f"{row.probe_worst_s * 1000:.0f} | {verdict} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(prog="python -m loadtest.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default="model_repository", help="the model repository to serve (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink counts and sizes by this factor (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=sorted(ATTACKS), help="run these attacks only")
    parser.add_argument("--log", default="hostile-serve.log", help="the server's log file (default: %(default)s)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    port = proc.free_port()
    command = [sys.executable, "-m", "effx_serve.cli", "serve", "--repo", args.repo, "--port", str(port), "--log-level", "warning",
               "--workers", "1", *serve_flags]  # one process: its memory is what /proc shows for its pid (the ceiling is per worker)
    with proc.running(command, f"http://127.0.0.1:{port}/readyz", Path(args.log), 300) as server:
        print(f"effx-serve (pid {server.pid}) on 127.0.0.1:{port}, scale {args.scale:g}; memory ceiling {CEILING_MB} MB above idle, "
              f"probe bound {PROBE_BOUND_S * 1000:.0f} ms", flush=True)
        print(HEADER, flush=True)
        rows = run(Target("127.0.0.1", port, args.scale), server.pid, args.only or list(ATTACKS), say=lambda line: print(line, flush=True))
    tracebacks = Path(args.log).read_text(errors="replace").count("Traceback")
    print(f"server log {args.log}: {tracebacks} tracebacks")
    missed = [row for row in rows if row.misses] or (["tracebacks"] if tracebacks else [])
    print("every target held" if not missed else f"{len(missed)} attack(s) missed a target")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
