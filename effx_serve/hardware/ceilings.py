"""Measured ceilings of this machine, and the roofline `Hardware` of any hardware id.

The host CPU: a float32 matmul rate and a large-copy bandwidth, measured with numpy (the serving install
has no torch) once per CPU model and cached as JSON. An NVIDIA GPU: matmul per precision and copy
bandwidth measured with torch where torch sees CUDA, else the vendor table. Other ids: the vendor table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from effx_serve.core.errors import UserError
from effx_serve.core.fs import cache_dir, write_atomic
from effx_serve.hardware.ids import cpu_hardware_id, cpu_model_name, host_cpu_id
from effx_serve.hardware.table import VENDOR_HARDWARE, Hardware

CACHE_VERSION = 1
HOST_ALIASES = ("host", "cpu")  # names for "this machine's CPU" in --hardware


@dataclass(frozen=True)
class Ceilings:
    hardware_id: str
    cpu_model: str
    threads: int
    fp32_flops: float  # FLOP/s of a large float32 matmul
    bandwidth: float  # bytes/s of a large array copy (read + write)
    measured_at: float
    numpy_version: str


def _best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch page faults and BLAS thread start-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(matmul_size: int = 2048, copy_mib: int = 256, repeats: int = 5) -> Ceilings:
    """Best-of-`repeats` matmul FLOP/s and copy bandwidth (best, because a ceiling is what is attainable)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((matmul_size, matmul_size), dtype=np.float32)
    b = rng.standard_normal((matmul_size, matmul_size), dtype=np.float32)
    out = np.empty_like(a)
    seconds = _best_time(lambda: np.matmul(a, b, out=out), repeats)
    flops = 2.0 * matmul_size**3 / seconds
    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    seconds = _best_time(lambda: np.copyto(dst, src), repeats)
    bandwidth = 2.0 * src.nbytes / seconds
    model = cpu_model_name()
    return Ceilings(
        hardware_id=cpu_hardware_id(model),
        cpu_model=model,
        threads=os.cpu_count() or 1,
        fp32_flops=flops,
        bandwidth=bandwidth,
        measured_at=time.time(),
        numpy_version=np.__version__,
    )


def _cached(path: Path, refresh: bool, build, trusted, measure) -> tuple[object, bool]:
    """A measurement cached as JSON at `path`: `build(dict)` from the cache when `trusted(value)`, else from
    `measure() -> dict`, which is stored. Returns (value, came_from_cache).

    A corrupt, foreign or old cache is measured again, not trusted.
    """
    if not refresh and path.exists():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.pop("cache_version", None) == CACHE_VERSION:
                value = build(data)
                if trusted(value):
                    return value, True
        except (ValueError, TypeError, AttributeError, KeyError, OSError):
            pass
    data = measure()
    write_atomic(path, json.dumps({"cache_version": CACHE_VERSION, **data}, indent=2))
    return build(data), False


def host_ceilings(refresh: bool = False) -> tuple[Ceilings, bool]:
    """The host's ceilings from the cache, measuring on a miss. Returns (ceilings, came_from_cache)."""
    hardware_id = host_cpu_id()

    def trusted(ceilings: Ceilings) -> bool:
        return ceilings.hardware_id == hardware_id and ceilings.fp32_flops > 0 and ceilings.bandwidth > 0

    return _cached(cache_dir() / f"ceilings-{hardware_id}.json", refresh, lambda data: Ceilings(**data), trusted,
                   lambda: asdict(measure()))


def host_hardware(refresh: bool = False) -> Hardware:
    """The host CPU as a roofline `Hardware`, from its measured (cached) ceilings."""
    ceilings, cached = host_ceilings(refresh=refresh)
    return Hardware(
        id=ceilings.hardware_id,
        name=f"{ceilings.cpu_model} ({ceilings.threads} threads)",
        kind="cpu",
        peak={"fp32": ceilings.fp32_flops},
        bandwidth=ceilings.bandwidth,
        source=f"measured on this host: numpy {ceilings.numpy_version} float32 matmul and array copy"
        + (" (cached)" if cached else ""),
    )


def get_hardware(hardware_id: str) -> Hardware:
    """The `Hardware` of an id: the vendor table, or this host's measured ceilings for `host`, `cpu` or its own cpu-... id."""
    key = hardware_id.strip().lower()
    if key in VENDOR_HARDWARE:
        return VENDOR_HARDWARE[key]
    if key in HOST_ALIASES or key.startswith("cpu-"):
        host_id = host_cpu_id()
        if key not in HOST_ALIASES and key != host_id:
            raise UserError(f"hardware '{hardware_id}' is a CPU other than this host ({host_id}); ceilings are measured, so run on it")
        return host_hardware()
    known = ", ".join([*VENDOR_HARDWARE, *HOST_ALIASES])
    raise UserError(f"unknown hardware '{hardware_id}' (known: {known})")


def measure_torch(device: str = "cuda", matmul_size: int = 8192, copy_mib: int = 1024, repeats: int = 10) -> dict:
    """Peak matmul FLOP/s per precision and copy bandwidth of a torch device, each the best of `repeats`.

    fp16 and bf16 are measured where the device runs them; the clock is read after a synchronize.
    """
    import torch

    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn) -> float:
        def run():
            fn()
            synchronize()

        return _best_time(run, repeats)

    peak = {}
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            a = torch.randn(matmul_size, matmul_size, device=device).to(dtype)
            b = torch.randn(matmul_size, matmul_size, device=device).to(dtype)
            peak[precision] = 2.0 * matmul_size**3 / timed(lambda a=a, b=b: torch.matmul(a, b))
        except (RuntimeError, TypeError):  # a precision the device does not run
            continue
    src = torch.ones(copy_mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2.0 * src.numel() * 4 / timed(lambda: dst.copy_(src))
    return {"peak": peak, "bandwidth": bandwidth, "torch": torch.__version__, "device": device, "measured_at": time.time()}


def device_hardware(detected, refresh: bool = False):
    """The roofline `Hardware` of the detected device, with measured ceilings wherever it can run code.

    CPU: numpy-measured (host_hardware). NVIDIA GPU: torch-measured when torch sees CUDA, cached per hardware id;
    else the vendor table. TPU: the vendor table (neither ONNX Runtime nor torch runs there).
    """
    if detected.hw_class == "cpu":
        return host_hardware(refresh=refresh)
    vendor = VENDOR_HARDWARE.get(detected.id)
    if detected.hw_class == "gpu" and _torch_cuda():
        data, _ = _cached(cache_dir() / f"ceilings-{detected.id}.json", refresh, dict,
                          lambda data: bool(data.get("peak")), lambda: measure_torch("cuda"))
        return Hardware(detected.id, detected.name, "gpu", data["peak"], data["bandwidth"],
                        f"measured on this host: torch {data['torch']} matmul and copy")
    if vendor is None:
        raise UserError(f"no ceilings for {detected.id}: torch cannot reach it and it is not in the vendor table")
    return vendor


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
