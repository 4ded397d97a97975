"""Latency measurement of an ONNX model under ONNX Runtime or a PyTorch module, with the protocol of docs/profiling.md.

Warm-up first (at least `warmup_runs` and `warmup_seconds`), then measurements of timed runs until both `min_runs` and
`min_seconds` are reached (at most `max_runs`), repeated until two measurements agree; each run's wall time is read with perf_counter around a
synchronous `session.run` whose outputs are host arrays (or a torch call followed by a device synchronize), so
device work is finished when the clock is read.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort

from effx_serve.core.errors import UserError, needs_extra
from effx_serve.perf.latency_store import LatencyRecord
from effx_serve.perf.session import onnxruntime_session


@dataclass(frozen=True)
class Protocol:
    warmup_runs: int = 5
    warmup_seconds: float = 0.5
    min_runs: int = 30
    min_seconds: float = 1.0
    max_runs: int = 2000
    rounds: int = 3  # the timed runs are split into rounds; p50 is the quietest round's (see time_calls)
    measurements: int = 2  # at least this many, and more (up to max_measurements) until two p50s agree within `agreement`
    max_measurements: int = 4
    agreement: float = 0.10


DEFAULT_PROTOCOL = Protocol()
SIDE_BY_SIDE_PROTOCOL = Protocol(measurements=1, max_measurements=1)  # one p50 per turn: the rounds are the repeats
SIDE_BY_SIDE_ROUNDS = 3  # rounds of a side-by-side timing at the least (a median needs three)

@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    spread: float  # interquartile range / median
    p50_measurements: tuple[float, ...] = ()  # each measurement's p50 (ms), in the order taken
    settled: bool = True  # two measurements agreed within the protocol's `agreement` (or only one was asked for)

    @classmethod
    def from_samples(cls, seconds: list[float]) -> Timing:
        if not seconds:
            raise ValueError("no timing samples")
        ms = np.asarray(seconds) * 1e3
        p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(statistics.fmean(ms)), len(ms), float((p75 - p25) / p50) if p50 else 0.0)


def time_calls(call, protocol: Protocol = DEFAULT_PROTOCOL) -> Timing:
    """Warm up, then measure `call()` until two measurements agree: p50 is the lower p50 of the closest pair that agrees.

    A measurement is `protocol.rounds` rounds that together meet the run and time minimums, and its p50 is the
    lowest of the rounds' medians: on a shared machine a neighbour's burst inflates whole rounds, and the quietest
    round is the best estimate of the model's own latency. A burst longer than a round still moves one measurement,
    so at least `protocol.measurements` are taken, and when that is two or more, more (up to `max_measurements`) while no two p50s are within
    `agreement` of each other; when none agree, p50 is their median and the timing says it is not settled.
    p90/p99, mean and spread come from all timed runs, so the tail still shows the noise.
    """
    start = time.perf_counter()
    runs = 0
    while runs < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_seconds:
        call()
        runs += 1
    measured = [_measure(call, protocol) for _ in range(max(1, protocol.measurements))]
    while len(measured) > 1 and len(measured) < protocol.max_measurements and _agreeing(measured, protocol.agreement) is None:
        measured.append(_measure(call, protocol))
    p50s = [p50 for p50, _ in measured]
    pair = _agreeing(measured, protocol.agreement)
    p50 = min(pair) if pair else float(np.median(p50s))
    pooled = Timing.from_samples([s for _, samples in measured for s in samples])
    return replace(pooled, p50_ms=p50, p90_ms=max(pooled.p90_ms, p50), p99_ms=max(pooled.p99_ms, p50),
                   p50_measurements=tuple(p50s), settled=pair is not None or len(measured) == 1)


def _measure(call, protocol: Protocol) -> tuple[float, list[float]]:
    """One measurement: (the quietest round's median in ms, every timed run's seconds)."""
    rounds = max(1, protocol.rounds)
    per_round = (max(1, -(-protocol.min_runs // rounds)), protocol.min_seconds / rounds, max(1, protocol.max_runs // rounds))
    samples: list[list[float]] = []
    for _ in range(rounds):
        timed: list[float] = []
        start = time.perf_counter()
        while len(timed) < per_round[2] and (len(timed) < per_round[0] or time.perf_counter() - start < per_round[1]):
            begin = time.perf_counter()
            call()
            timed.append(time.perf_counter() - begin)
        samples.append(timed)
    return min(float(np.median(timed)) for timed in samples) * 1e3, [s for timed in samples for s in timed]


def _agreeing(measured: list[tuple[float, list[float]]], agreement: float) -> tuple[float, float] | None:
    """The two p50s closest to each other (relative to the lower), when within `agreement`; else None."""
    p50s = sorted(p50 for p50, _ in measured)
    pairs = [(high - low) / low if low > 0 else (0.0 if high == low else math.inf) for low, high in zip(p50s, p50s[1:], strict=False)]
    if not pairs or min(pairs) > agreement:
        return None
    index = pairs.index(min(pairs))
    return p50s[index], p50s[index + 1]


def _check_batch(batch: int) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise UserError(f"batch must be a whole number of at least 1, got {batch!r}")


def profile_onnx(path: str | os.PathLike, batch: int, resolution: int, provider: str = "CPUExecutionProvider",
                 threads: int | None = None, protocol: Protocol = DEFAULT_PROTOCOL) -> tuple[Timing, dict]:
    """Time one ONNX model at one batch size. Returns the timing and the settings it ran with."""
    _check_batch(batch)
    session = onnxruntime_session(path, provider, threads)
    model_input = session.get_inputs()[0]
    height, width = model_input.shape[2:4] if len(model_input.shape) == 4 else (None, None)
    if (isinstance(height, int) and height != resolution) or (isinstance(width, int) and width != resolution):
        raise UserError(f"ONNX model {path} takes {height}x{width} images, not {resolution}x{resolution}")
    images = np.random.default_rng(0).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
    timing = time_calls(lambda: session.run(None, {model_input.name: images}), protocol)
    options = session.get_session_options()
    settings = {"provider": provider, "intra_op_threads": options.intra_op_num_threads, "inter_op_threads": options.inter_op_num_threads,
                "onnxruntime": ort.__version__} | _protocol_settings(protocol)
    return timing, settings


TORCH_MODES = ("eager", "compile", "cudagraph")


def profile_torch(model, batch: int, resolution: int, device: str = "cpu", precision: str = "fp32", mode: str = "eager",
                  threads: int | None = None, protocol: Protocol = DEFAULT_PROTOCOL) -> tuple[Timing, dict]:
    """Time a PyTorch module at one batch size, synchronising the device per run.

    `mode`: eager; `compile` (torch.compile); `cudagraph` (the eager kernels captured once in a CUDA graph and
    replayed: what the GPU takes without Python's per-kernel launch cost, CUDA only).
    """
    _check_batch(batch)
    if mode not in TORCH_MODES:
        raise UserError(f"unknown torch mode '{mode}' (known: {', '.join(TORCH_MODES)})")
    if mode == "cudagraph" and not device.startswith("cuda"):
        raise UserError(f"the CUDA-graph runtime replays a graph captured on a CUDA device; this machine's device is {device} "
                        "(use the torch or onnxruntime runtime)")
    with needs_extra("train", "the torch runtime"):
        import torch
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise UserError(f"the torch runtime runs fp32, fp16 or bf16, not {precision}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("the torch runtime was asked for CUDA but torch sees no CUDA device")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _time_torch(torch, model, batch, resolution, device, dtypes[precision], mode, protocol)
    finally:
        torch.set_num_threads(previous_threads)


def _time_torch(torch, model, batch, resolution, device, dtype, mode, protocol) -> tuple[Timing, dict]:
    model = model.to(device=device, dtype=dtype).eval()
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if mode == "compile" else model
    images = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if mode == "cudagraph":
        runner = captured_in_cuda_graph(torch, model, images)

    def call():
        with torch.inference_mode():
            runner(images)
        synchronize()  # the clock is read after the device finished, not when the launch returned

    timing = time_calls(call, protocol)
    settings = {"device": device, "mode": mode, "torch_threads": torch.get_num_threads(), "torch": torch.__version__} | _protocol_settings(protocol)
    return timing, settings


def captured_in_cuda_graph(torch, model, images):
    """A callable that replays `model(images)` captured in a CUDA graph and returns its (static) output; it reads
    `images` wherever it was at capture, so every call computes on that tensor, as the timing does."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(3):  # cuDNN picks its kernels and the allocator settles before capture, on a side stream as capture needs
            model(images)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = model(images)

    def replay(_images):
        graph.replay()
        return output

    return replay


def _protocol_settings(protocol: Protocol) -> dict:
    return {"warmup_runs": protocol.warmup_runs, "min_runs": protocol.min_runs, "min_seconds": protocol.min_seconds,
            "rounds": protocol.rounds, "p50": f"lowest round median; measured until two measurements agree within {protocol.agreement:.0%}"}


def get_or_measure(store, key, model: str, measure) -> tuple[object, bool]:
    """The stored measured record for `key`, or measure it now (`measure() -> (Timing, settings)`) and store it.

    Returns (record, came_from_store): a cached result is never measured twice.
    """
    cached = store.get(key, provenance="measured")
    if cached is not None:
        return cached, True
    timing, settings = measure()
    record = LatencyRecord(key, "measured", timing.p50_ms, timing.p90_ms, timing.p99_ms, timing.runs, timing.spread,
                           model=model, details=settings | {"mean_ms": timing.mean_ms, "p50_measurements_ms": list(timing.p50_measurements),
                                                                   "settled": timing.settled})
    store.put(record)
    return record, False
