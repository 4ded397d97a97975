"""The server's JPEG decoding (core/jpeg.py: libjpeg-turbo in one call that releases the GIL) against Pillow's path,
side by side in one run: images/s of image bytes -> model input, in 1 .. cores threads of this process.

    .venv/bin/python benchmarks/decode.py [--resolutions 32,48,72,108] [--duration 2] [--rounds 2]

Both paths give the same model input (tests/core/test_jpeg.py checks it pixel for pixel). The server decodes in as many
lanes (threads) as there are cores, so the row with that many threads is the one that counts: what one path leaves of
the interpreter lock to the other threads shows there, not in one thread. Rounds alternate the paths; every figure
of every round is printed, so the spread is visible. One 640x480 photo-like JPEG (quality 90), as benchmarks/serving.py.
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time

from effx_serve.cli.common import positive_float, positive_int, run_script
from effx_serve.core import preprocess
from effx_serve.core.photos import synthetic_photo
from effx_serve.core.proc import available_cpus


def pillow_input(data: bytes, resolution: int):
    """What the server did before core/jpeg.py: Pillow's draft to the same power-of-two scale, EXIF orientation, RGB."""
    shorter = math.ceil(resolution / preprocess.DEFAULT_CROP_FRACTION)
    return preprocess.to_input(preprocess.to_rgb(preprocess.decode_image(data, shrink_to=shorter)), resolution)


PATHS = {"server": preprocess.serving_input, "pillow": pillow_input}


def images_per_s(path, data: bytes, resolution: int, threads: int, duration_s: float) -> float:
    for _ in range(20):
        path(data, resolution)
    counts: list[int] = []
    stop = time.perf_counter() + duration_s

    def work() -> None:
        done = 0
        while time.perf_counter() < stop:
            path(data, resolution)
            done += 1
        counts.append(done)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def _resolutions(text: str) -> list[int]:
    sides = [side.strip() for side in text.split(",")]
    if not all(side.isdigit() and 1 <= int(side) <= preprocess.MAX_RESOLUTION for side in sides):
        raise argparse.ArgumentTypeError(f"resolutions are comma-separated sides of 1 to {preprocess.MAX_RESOLUTION} pixels, "
                                         f"e.g. 32,48,72,108, not '{text}'")
    return [int(side) for side in sides]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=_resolutions, default="32,48,72,108", help="model input sides (default: %(default)s, the demo family's)")
    parser.add_argument("--duration", type=positive_float, default=2.0, help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="times each measurement is taken, the paths alternating (default: %(default)s)")
    args = parser.parse_args()
    resolutions = args.resolutions
    data = synthetic_photo(640, 480, "JPEG", quality=90)
    cores = available_cpus()
    thread_counts = sorted({1, cores})
    print(f"{cores} CPUs; 640x480 JPEG q90, {len(data)} bytes; images/s of bytes -> model input, {args.duration:g} s a figure, "
          f"{args.rounds} rounds (each figure listed)")
    print(f"{'resolution':>10s} {'threads':>7s} {'server img/s':>20s} {'pillow img/s':>20s} {'server/pillow':>13s}")
    for resolution in resolutions:
        for threads in thread_counts:
            figures: dict[str, list[float]] = {name: [] for name in PATHS}
            for round_index in range(args.rounds):
                order = list(PATHS) if round_index % 2 == 0 else list(reversed(PATHS))
                for name in order:
                    figures[name].append(images_per_s(PATHS[name], data, resolution, threads, args.duration))
            listed = {name: ",".join(f"{v:.0f}" for v in values) for name, values in figures.items()}
            ratio = statistics.median(figures["server"]) / statistics.median(figures["pillow"])
            print(f"{resolution:10d} {threads:7d} {listed['server']:>20s} {listed['pillow']:>20s} {ratio:13.2f}")
    return 0


if __name__ == "__main__":
    run_script(main)
