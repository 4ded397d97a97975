"""How `serve --workers 2` spreads a burst of keep-alive connections over its workers.

    .venv/bin/python benchmarks/connection_spread.py --repo model_repository [--connections 8] [--trials 20] [--busy 2]
                                                     [--code DIR]

Starts `effx-serve serve --workers 2` (with --code, the code in DIR: a worktree of another commit, first on its
PYTHONPATH), waits until both workers are warm, then `--trials` times opens `--connections` connections at once, sends
one request on each, and counts from /proc which worker holds each. With `--busy N`, N other connections keep the
workers busy with classifications by the slowest member meanwhile (not counted). Prints the most connections on one worker per trial,
their mean share (0.5 is an even split) and the trials with 3/4 or more on one worker.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import serving

from effx_serve.cli.common import count, positive_int, run_script
from effx_serve.core.photos import synthetic_photo


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _established(port: int) -> set[str]:
    """The socket inodes of the server's established connections on `port` (IPv4)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    return inodes


def _keep_busy(port: int, request: bytes, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        buffer = b""
        while not stop.is_set():
            connection.sendall(request)
            _, _, buffer = serving.read_answer(connection, buffer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default="model_repository")
    parser.add_argument("--connections", type=positive_int, default=8)
    parser.add_argument("--trials", type=positive_int, default=20)
    parser.add_argument("--busy", type=count, default=0, help="connections keeping the workers busy meanwhile (default: 0)")
    parser.add_argument("--code", type=serving.checkout, help="run the server from this checkout (first on its PYTHONPATH)")
    args = parser.parse_args()
    if not (Path(args.repo) / "manifest.json").is_file():
        parser.error(f"{args.repo} has no manifest.json: build it first (effx-serve build-repo --demo)")
    with tempfile.TemporaryDirectory(prefix="effx-bench-spread-") as work, \
            serving.router(Path(args.repo), ["--workers", "2"], Path(work), code=args.code) as (port, server):
        time.sleep(8)  # the port answers once one worker is warm: give the other its time too
        workers = [int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        photo = synthetic_photo(640, 480, "JPEG")
        request = serving.http_request(port, f"/v1/classify?member={serving.members_by_latency(port)[-1]}", photo, "image/jpeg")
        stop = threading.Event()
        for _ in range(args.busy):
            threading.Thread(target=_keep_busy, args=(port, request, stop), daemon=True).start()
        time.sleep(1 if args.busy else 0)
        most = []
        try:
            for _ in range(args.trials):
                before = _established(port)
                burst = [socket.socket() for _ in range(args.connections)]
                for connection in burst:
                    connection.setblocking(False)
                    try:
                        connection.connect(("127.0.0.1", port))
                    except BlockingIOError:
                        pass
                time.sleep(0.5)
                for connection in burst:
                    connection.setblocking(True)
                    connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n")
                for connection in burst:
                    connection.recv(4096)
                new = _established(port) - before
                most.append(max(len(_socket_inodes(worker) & new) for worker in workers))
                for connection in burst:
                    connection.close()
                time.sleep(0.3)
        finally:
            stop.set()
    lopsided = sum(count >= 0.75 * args.connections for count in most)
    print(f"{args.code or 'this checkout'}: {args.connections} connections at once, {args.busy} busy, {args.trials} trials; most on one "
          f"worker per trial: {most}; mean share {statistics.mean(most) / args.connections:.2f}; 3/4 or more on one: {lopsided}/{args.trials}")
    return 0


if __name__ == "__main__":
    run_script(main)
