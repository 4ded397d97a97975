"""Measured ceilings of the host CPU: a float32 matmul rate and a large-copy memory bandwidth.

Measured once per CPU model with numpy (the serving install has no torch) and cached as JSON.
Issue-level detail: this is the roofline's view of "the host"; GPU ceilings are measured where
a GPU is present (see docs/roofline.md).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from effx_serve.paths import cache_dir, write_atomic

CACHE_VERSION = 1


@dataclass(frozen=True)
class Ceilings:
    hardware_id: str
    cpu_model: str
    threads: int
    fp32_flops: float  # FLOP/s of a large float32 matmul
    bandwidth: float  # bytes/s of a large array copy (read + write)
    measured_at: float
    numpy_version: str


def read_cpuinfo() -> str:
    """/proc/cpuinfo, or '' where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_hardware_id(model_name: str) -> str:
    """`cpu-<slug>`: e.g. 'Intel(R) Xeon(R) Platinum 8480C' -> 'cpu-intel-xeon-platinum-8480c'."""
    text = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b", " ", model_name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return f"cpu-{slug or 'unknown'}"


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


def host_ceilings(refresh: bool = False) -> tuple[Ceilings, bool]:
    """The host's ceilings from the cache, measuring on a miss. Returns (ceilings, came_from_cache)."""
    hardware_id = cpu_hardware_id(cpu_model_name())
    path = cache_dir() / f"ceilings-{hardware_id}.json"
    if not refresh and path.exists():
        try:
            data = json.loads(path.read_text())
            if data.pop("cache_version", None) == CACHE_VERSION:
                cached = Ceilings(**data)
                if cached.hardware_id == hardware_id and cached.fp32_flops > 0 and cached.bandwidth > 0:
                    return cached, True
        except (ValueError, TypeError, AttributeError, OSError):
            pass  # a corrupt, foreign or old cache is measured again, not trusted
    ceilings = measure()
    write_atomic(path, json.dumps({"cache_version": CACHE_VERSION, **asdict(ceilings)}, indent=2))
    return ceilings, False
