"""Detect the accelerator this process runs on and map it to a hardware id and class.

Probes, first hit wins: NVIDIA GPUs (NVML through pynvml, else `nvidia-smi`, else a probe the caller
passes, such as torch_probe's), TPUs (the runtime's environment, its device files, or libtpu), else the CPU
(/proc/cpuinfo). Every probe takes its inputs (environment, command runner, cpuinfo text, file test, module finder)
as arguments, so tests run each path with faked tool output.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from effx_serve.hardware.ids import cpu_hardware_id, cpu_model_name, nvidia_id, read_cpuinfo, tpu_id


@dataclass(frozen=True)
class DetectedHardware:
    id: str  # nvidia-h200, tpu-v3, cpu-intel-xeon-platinum-8480c, ...
    hw_class: str  # gpu, tpu, cpu
    name: str
    source: str  # which probe found it
    count: int = 1
    memory_bytes: int | None = None
    compute_capability: str | None = None
    cpu_flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"id": data.pop("id"), "class": data.pop("hw_class"), **data,
                "cpu_flags": list(self.cpu_flags), "notes": list(self.notes)}


Runner = Callable[[list[str]], str | None]


def run_command(argv: list[str]) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs (detection must never block start-up)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _from_nvml() -> DetectedHardware | None:
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                return None
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - a broken driver means "no GPU seen this way", not a crash
        return None
    return DetectedHardware(nvidia_id(name), "gpu", name, "nvml", count, memory, f"{major}.{minor}")


def _from_nvidia_smi(run: Runner) -> DetectedHardware | None:
    out = run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"])
    rows = [[cell.strip() for cell in line.split(",")] for line in (out or "").splitlines() if line.strip()]
    if not rows:
        return None
    name, memory_mib, capability = (rows[0] + ["", "", ""])[:3]
    memory = int(float(memory_mib)) * 2**20 if re.fullmatch(r"[\d.]+", memory_mib) else None
    capability = capability if re.fullmatch(r"\d+\.\d+", capability) else None
    return DetectedHardware(nvidia_id(name), "gpu", name, "nvidia-smi", len(rows), memory, capability)


def _from_tpu(env: Mapping[str, str], exists: Callable[[str], bool], find_spec: Callable[[str], object]) -> DetectedHardware | None:
    for variable in ("TPU_ACCELERATOR_TYPE", "ACCELERATOR_TYPE"):
        hardware_id = tpu_id(env.get(variable, ""))
        if hardware_id:
            return DetectedHardware(hardware_id, "tpu", f"Google TPU {env[variable]}", f"env:{variable}")
    devices = [p for p in ("/dev/accel0", "/dev/vfio/0") if exists(p)]
    if devices or env.get("TPU_NAME") or find_spec("libtpu") is not None:
        source = f"device:{devices[0]}" if devices else ("env:TPU_NAME" if env.get("TPU_NAME") else "libtpu")
        return DetectedHardware("tpu-unknown", "tpu", "Google TPU (generation not reported)", source,
                                notes=("set TPU_ACCELERATOR_TYPE (e.g. v3-8) to name the generation",))
    return None


def _cpu(cpuinfo: str) -> DetectedHardware:
    name = cpu_model_name(cpuinfo)
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    interesting = sorted(f for f in flags if re.match(r"(avx|amx|fma|sse4|neon|asimd|sve|f16c|vnni)", f))
    return DetectedHardware(cpu_hardware_id(name), "cpu", name, "cpuinfo", os.cpu_count() or 1, cpu_flags=tuple(interesting))


def detect(
    env: Mapping[str, str] | None = None,
    run: Runner = run_command,
    cpuinfo: str | None = None,
    exists: Callable[[str], bool] = os.path.exists,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    use_nvml: bool = True,
    gpu_probe: Callable[[], DetectedHardware | None] | None = None,
) -> DetectedHardware:
    """The accelerator of this machine. `gpu_probe` is asked after NVML and nvidia-smi (the CLI passes
    torch_probe.detect_cuda with --allow-torch); none by default, since the serving path never imports torch."""
    env = os.environ if env is None else env
    found = (_from_nvml() if use_nvml else None) or _from_nvidia_smi(run) or (gpu_probe() if gpu_probe else None)
    found = found or _from_tpu(env, exists, find_spec)
    if found:
        return found
    return _cpu(read_cpuinfo() if cpuinfo is None else cpuinfo)
