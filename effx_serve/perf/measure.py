"""Measure a spec's latency on this machine through the latency store: export (cached), time, record.

The runtime names that key the store: `onnxruntime` (CPU execution provider), `onnxruntime-cuda`,
`onnxruntime-tensorrt`, `torch` (eager), `torch-compile` and `torch-cudagraph` (the eager kernels replayed
from a CUDA graph). Exported ONNX files are cached by architecture hash and resolution, so a spec is
exported once however often it is profiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import median

from effx_serve.core.errors import UserError, needs_extra
from effx_serve.core.fs import cache_dir
from effx_serve.hardware.machine import Machine
from effx_serve.perf.latency_model import predictor
from effx_serve.perf.latency_store import LatencyKey, LatencyRecord, LatencyStore
from effx_serve.perf.profiler import (
    DEFAULT_PROTOCOL,
    SIDE_BY_SIDE_PROTOCOL,
    Protocol,
    Timing,
    get_or_measure,
    profile_onnx,
    profile_torch,
)
from effx_serve.perf.roofline import analyze
from effx_serve.perf.session import CPU_THREADS
from training.arch.spec import ModelSpec

ORT_PROVIDERS = {"onnxruntime": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider",
                 "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
TORCH_RUNTIMES = {"torch": "eager", "torch-compile": "compile", "torch-cudagraph": "cudagraph"}
RUNTIMES = (*ORT_PROVIDERS, *TORCH_RUNTIMES)
RUNTIME_HELP = "runtime latency is measured with (default: torch-cudagraph on a GPU, onnxruntime on a CPU)"


def default_runtime(hw_class: str) -> str:
    """The runtime a latency on a machine of `hw_class` (gpu, tpu, cpu) means when none is named: on a GPU its kernels
    replayed from a CUDA graph (eager torch there times Python's kernel launches, and ONNX Runtime's CPU provider
    times the host); elsewhere ONNX Runtime's CPU provider, what the server runs on a CPU."""
    return "torch-cudagraph" if hw_class == "gpu" else "onnxruntime"


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")


def onnx_file(spec: ModelSpec, resolution: int) -> Path:
    """The spec exported at `resolution` (random weights: latency does not depend on their values), cached."""
    path = cache_dir() / "onnx" / f"{spec.arch_hash()}-r{resolution}.onnx"
    if not path.exists():
        with needs_extra("train", "exporting a model"):
            from training.arch.export import export_onnx
            from training.arch.model import build_model
        export_onnx(build_model(spec.with_(resolution=resolution)), path, resolution)
    return path


def measure_spec(spec: ModelSpec, resolution: int, batch: int, runtime: str, machine: Machine, store: LatencyStore,
                 precision: str = "fp32", protocol: Protocol = DEFAULT_PROTOCOL, threads: int | None = None,
                 onnx_path: Path | None = None) -> tuple[LatencyRecord, bool]:
    """The measured record of `spec` at (resolution, batch) on this machine: from the store, or timed now.

    ONNX runtimes time `onnx_path` when given (an export of this spec at this resolution), else a cached
    export with random weights: latency depends on the graph, not on the weights' values.
    """
    check_runtime(runtime)
    if runtime in ORT_PROVIDERS and precision != "fp32":
        raise UserError(f"runtime {runtime} profiles the exported fp32 model; use --runtime torch for {precision}")
    key = LatencyKey(spec.arch_hash(), machine.hardware_id, runtime, precision, batch, resolution)
    return get_or_measure(store, key, spec.name, lambda: time_spec(spec, resolution, batch, runtime, machine, precision, protocol, threads,
                                                                    onnx_path))


def time_in_turn(timed: Sequence[tuple[ModelSpec, Path | None]], batches: Sequence[int], runtime: str, machine: Machine,
                 rounds: int) -> list[dict[int, list[tuple[Timing, dict]]]]:
    """Each (spec, its ONNX export or None) timed at each batch in turn, `rounds` times over (A B C A B C ...), in this
    one process, not stored: per spec, {batch: one (timing, settings) per round}.

    Records measured minutes apart on a shared machine can disagree by 2x (a family's b2 measured slower than its
    b3); timings taken in turn share the machine's state, so their order and ratios hold."""
    taken: list[dict[int, list[tuple[Timing, dict]]]] = [{batch: [] for batch in batches} for _ in timed]
    for _ in range(rounds):
        for batch in batches:
            for (spec, onnx_path), per_batch in zip(timed, taken, strict=True):
                per_batch[batch].append(time_spec(spec, spec.resolution, batch, runtime, machine, protocol=SIDE_BY_SIDE_PROTOCOL,
                                                  onnx_path=onnx_path))
    return taken


def side_by_side(timed: Sequence[tuple[ModelSpec, Path | None]], batches: Sequence[int], runtime: str, machine: Machine,
                 store: LatencyStore, rounds: int) -> dict[tuple[str, int], LatencyRecord]:
    """time_in_turn's timings as stored records, {(spec name, batch): record}: p50/p90/p99 the median of the rounds'."""
    names = sorted(spec.name for spec, _ in timed)
    records = {}
    for (spec, _), per_batch in zip(timed, time_in_turn(timed, batches, runtime, machine, rounds), strict=True):
        for batch, timings in per_batch.items():
            p50s = [timing.p50_ms for timing, _ in timings]
            key = LatencyKey(spec.arch_hash(), machine.hardware_id, runtime, "fp32", batch, spec.resolution)
            record = LatencyRecord(key, "measured", median(p50s), median([t.p90_ms for t, _ in timings]), median([t.p99_ms for t, _ in timings]),
                                   sum(t.runs for t, _ in timings), median([t.spread for t, _ in timings]), model=spec.name,
                                   details=timings[0][1] | {"side_by_side": {"rounds": rounds, "with": names, "p50_rounds_ms": p50s}})
            store.put(record)
            records[spec.name, batch] = record
    return records


def time_spec(spec: ModelSpec, resolution: int, batch: int, runtime: str, machine: Machine, precision: str = "fp32",
              protocol: Protocol = DEFAULT_PROTOCOL, threads: int | None = None, onnx_path: Path | None = None) -> tuple[Timing, dict]:
    """Time `spec` now, without the store: (timing, the settings it ran with)."""
    if threads is None and (machine.device == "cpu" or runtime in ORT_PROVIDERS):  # an ONNX Runtime session as it serves
        threads = CPU_THREADS
    if runtime in ORT_PROVIDERS:
        return profile_onnx(onnx_path or onnx_file(spec, resolution), batch, resolution, ORT_PROVIDERS[runtime], threads, protocol)
    from training.arch.model import build_model

    model = build_model(spec.with_(resolution=resolution))
    return profile_torch(model, batch, resolution, machine.device, precision, TORCH_RUNTIMES[runtime], threads, protocol)


def measured_vs_predicted(specs: Sequence[ModelSpec], batches: Sequence[int], runtime: str, precision: str, machine: Machine,
                          store: LatencyStore, resolution: int | None = None) -> tuple[list[dict], str]:
    """Per spec and batch: the measured latency beside the predicted one (this machine's calibrated latency model, else the
    ideal roofline) and the achieved rates (FLOP/s, bytes/s, their fractions of the ceilings, E). Returns (rows, predictor)."""
    predict, source = predictor(machine, runtime, precision)
    peak, bandwidth = machine.hardware.peak_for(precision), machine.hardware.bandwidth
    rows = []
    for spec in specs:
        size = resolution or spec.resolution
        for batch in batches:
            record, cached = measure_spec(spec, size, batch, runtime, machine, store, precision)
            ideal = analyze(spec, machine.hardware, batch, precision, size)
            seconds = record.p50_ms / 1e3
            predicted = predict(spec, batch, size)
            rows.append(dict(model=spec.name, resolution=size, batch=batch, runtime=runtime, hardware=machine.hardware_id,
                             measured_ms=record.p50_ms, p90_ms=record.p90_ms, p99_ms=record.p99_ms, spread=record.spread, runs=record.runs,
                             cached=cached, predicted_ms=predicted, predicted_by=source,
                             flops_per_s=ideal.flops / seconds, bytes_per_s=ideal.bytes / seconds,
                             peak_fraction=ideal.flops / seconds / peak, bandwidth_fraction=ideal.bytes / seconds / bandwidth,
                             efficiency=ideal.predicted_ms / record.p50_ms, details=record.details, error=predicted / record.p50_ms - 1))
    return rows, source
