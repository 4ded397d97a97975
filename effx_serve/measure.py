"""Measure a spec's latency on this machine through the latency store: export (cached), time, record.

The runtime names that key the store: `onnxruntime` (CPU execution provider), `onnxruntime-cuda`,
`onnxruntime-tensorrt`, `torch` (eager) and `torch-compile`. Exported ONNX files are cached by
architecture hash and resolution, so a spec is exported once however often it is profiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from effx_serve.errors import UserError
from effx_serve.latency_store import LatencyKey, LatencyRecord, LatencyStore
from effx_serve.paths import cache_dir
from effx_serve.profiler import DEFAULT_PROTOCOL, Protocol, get_or_measure, profile_onnx, profile_torch
from effx_serve.roofline import Hardware
from training.spec import ModelSpec

ORT_PROVIDERS = {"onnxruntime": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider",
                 "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
RUNTIMES = (*ORT_PROVIDERS, "torch", "torch-compile")
# On a CPU every measurement uses one intra-op thread: on small shared hosts a second thread makes latency
# both noisier and less predictable (docs/profiling.md), and a server scales out with one session per core.
CPU_THREADS = 1


@dataclass(frozen=True)
class Machine:
    """This machine as the profiler sees it: the detected id, the roofline hardware (ceilings) and the torch device."""

    hardware_id: str
    hardware: Hardware
    device: str  # torch device for the torch runtimes


def this_machine(refresh_ceilings: bool = False) -> Machine:
    from effx_serve.ceilings import device_hardware
    from effx_serve.hardware import detect

    detected = detect()
    hardware = device_hardware(detected, refresh=refresh_ceilings)
    return Machine(detected.id, hardware, "cuda" if detected.hw_class == "gpu" else "cpu")


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")


def onnx_file(spec: ModelSpec, resolution: int) -> Path:
    """The spec exported at `resolution` (random weights: latency does not depend on their values), cached."""
    path = cache_dir() / "onnx" / f"{spec.arch_hash()}-r{resolution}.onnx"
    if not path.exists():
        try:
            from training.export import export_onnx
            from training.model import build_model
        except ImportError as error:
            raise UserError(f"exporting a model needs the training extra ({error.name} is missing): pip install 'effx-serve[train]'") from None
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
    if threads is None and machine.device == "cpu":
        threads = CPU_THREADS

    def run():
        if runtime in ORT_PROVIDERS:
            return profile_onnx(onnx_path or onnx_file(spec, resolution), batch, resolution, ORT_PROVIDERS[runtime], threads, protocol)
        from training.model import build_model

        model = build_model(spec.with_(resolution=resolution))
        return profile_torch(model, batch, resolution, machine.device, precision, runtime == "torch-compile", threads, protocol)

    return get_or_measure(store, key, spec.name, run)
