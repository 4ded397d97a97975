"""The server's CPU per answer, this code against another (or other settings), side by side in one run: a change of a few
percent in what a request costs shows here where served throughput (benchmarks/serving.py) moves by more than that from
run to run.

    .venv/bin/python benchmarks/cpu_per_answer.py [--against /path/to/a/worktree] [--serve-arg=ARG] [--against-arg=ARG]
        [--repo model_repository] [--member NAME] [--rate 60] [--duration 15] [--rounds 3] [--image-size 640x480]

Two `effx-serve serve` processes on the same repository, both on the same CPU (the first of this process's; the load is
generated on the others): one runs this checkout's code with the --serve-arg settings, the other the code at --against
(a checkout or worktree of another commit, put first on its PYTHONPATH; default: this checkout) with --against-arg.
Every tick of an open-loop schedule at --rate sends one request (the same photo-like JPEG, pinned to --member) to each,
in turns of who goes first, so both see the same load at the same moments and the same state of a shared machine. Per round: each server's CPU time (all its threads, from /proc) over its answers,
and the ratio this / against. Below saturation the ratio is what a request costs, not how the two divide a core.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serving  # noqa: E402

from effx_serve.cli.common import positive_float, positive_int, run_script
from effx_serve.core.errors import UserError
from effx_serve.core.photos import synthetic_photo  # noqa: E402

CONNECTIONS = 32  # per server; used in turn, so none idles into the server's keep-alive timeout


async def _round(ports: list[int], pids: list[int], request: dict[int, bytes], rate: float, duration_s: float) -> dict[int, tuple[float, int]]:
    """(CPU ms per answer, answers) per port, over one open-loop round."""
    pools = {}
    for port in ports:
        pools[port] = collections.deque([await asyncio.open_connection(serving.HOST, port) for _ in range(CONNECTIONS)])
    answers = dict.fromkeys(ports, 0)

    async def one(port: int) -> None:
        while not pools[port]:  # every connection busy: the server is saturated, which this benchmark should not be
            await asyncio.sleep(0.001)
        reader, writer = connection = pools[port].popleft()
        writer.write(request[port])
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(serving._LENGTH.search(head).group(1)))
        answers[port] += head[9:12] == b"200"
        pools[port].append(connection)

    before = {port: sum(serving._ticks(p) or 0 for p in serving._tree(pid)) for port, pid in zip(ports, pids, strict=True)}
    started, sent, tasks = time.perf_counter(), 0, []
    while (due := started + sent / rate) < started + duration_s:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        order = ports if sent % 2 == 0 else ports[::-1]
        tasks += [asyncio.create_task(one(port)) for port in order]
        sent += 1
    await asyncio.gather(*tasks)
    hz = os.sysconf("SC_CLK_TCK")
    result = {}
    for port, pid in zip(ports, pids, strict=True):
        ticks = sum(serving._ticks(p) or 0 for p in serving._tree(pid)) - before[port]
        result[port] = (1000.0 * ticks / hz / max(1, answers[port]), answers[port])
    for pool in pools.values():
        for _, writer in pool:
            writer.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=serving.checkout, default=Path(__file__).resolve().parents[1],
                        help="a checkout of the code to compare with (its effx_serve/; default: this checkout)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="an argument for this server's `serve` (repeat for several)")
    parser.add_argument("--against-arg", action="append", default=[], metavar="ARG", help="an argument for the other server's `serve`")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--member", help="the member every request pins (default: the repository's fastest)")
    parser.add_argument("--rate", type=positive_float, default=60.0, help="requests/s to each server (keep it well below saturation)")
    parser.add_argument("--duration", type=positive_float, default=15.0)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--image-size", type=serving._size, default=(640, 480))
    args = parser.parse_args(argv)
    if not (args.repo / "manifest.json").is_file():
        parser.error(f"{args.repo} has no manifest.json: build the demo repository first (effx-serve build-repo --demo)")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, generator_cpus = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    os.sched_setaffinity(0, generator_cpus)
    image = synthetic_photo(*args.image_size, "JPEG", quality=90)
    with tempfile.TemporaryDirectory(prefix="effx-bench-cpu-") as folder:
        work = Path(folder)
        with serving.router(args.repo, args.serve_arg, work, cpus=server_cpus) as (this, this_process), \
                serving.router(args.repo, args.against_arg, work, cpus=server_cpus, code=args.against) as (other, other_process):
            known = serving.members_by_latency(this)
            if args.member is not None and args.member not in known:
                raise UserError(f"unknown member '{args.member}'; {args.repo} has {', '.join(known)}")
            member = args.member or known[0]
            request = {port: serving.http_request(port, f"/v1/classify?member={member}", image, "image/jpeg") for port in (this, other)}
            print(f"{member}, {args.rate:g} requests/s to each server for {args.duration:g} s, both servers on CPU {cpus[0]}; "
                  f"{' '.join(['this checkout', *args.serve_arg])} against {' '.join([str(args.against), *args.against_arg])}")
            ratios = []
            for index in range(args.rounds):
                figures = asyncio.run(_round([this, other], [this_process.pid, other_process.pid], request, args.rate, args.duration))
                (mine, answered), (theirs, their_answered) = figures[this], figures[other]
                ratios.append(mine / theirs)
                print(f"round {index + 1}: this {mine:.3f} ms of CPU per answer ({answered} answers), against {theirs:.3f} "
                      f"({their_answered}): {ratios[-1]:.3f}", flush=True)
    print(f"this / against: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    run_script(main)
