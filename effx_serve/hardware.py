"""Detect the accelerator this process runs on and map it to a hardware id and class.

Probes, first hit wins: NVIDIA GPUs (NVML through pynvml, else `nvidia-smi`, else torch when the caller
allows importing it), TPUs (the runtime's environment, its device files, or libtpu), else the CPU
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

from effx_serve.ceilings import cpu_hardware_id, cpu_model_name, read_cpuinfo

_KNOWN_NVIDIA = re.compile(r"\b(gb200|b200|b100|h200|h100|h800|gh200|a100|a800|a40|a30|a10g|a10|l40s|l40|l4|v100|t4|p100|p40|k80)\b")
_TPU_TYPE = re.compile(r"^(v\d+[a-z]*?)(?:litepod|pod)?(?:-\d+)?$")


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


def nvidia_id(name: str) -> str:
    """'NVIDIA H200' -> nvidia-h200, 'Tesla V100-SXM2-16GB' -> nvidia-v100, 'NVIDIA GeForce RTX 4090' -> nvidia-rtx-4090."""
    text = name.lower()
    match = _KNOWN_NVIDIA.search(text.replace("-", " "))
    if match:
        return f"nvidia-{match.group(1)}"
    text = re.sub(r"\b(nvidia|tesla|geforce|quadro)\b|\d+\s*gb\b|pcie|sxm\d*|hbm\d*e?", " ", text)
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return f"nvidia-{slug or 'gpu'}"


def tpu_id(accelerator_type: str) -> str | None:
    """'v3-8' -> tpu-v3, 'v5litepod-16' -> tpu-v5e, 'v4i' -> tpu-v4i; None when it is not a TPU type."""
    text = accelerator_type.strip().lower()
    if text.startswith("v5litepod") or text.startswith("v5e"):
        return "tpu-v5e"
    match = _TPU_TYPE.match(text)
    return f"tpu-{match.group(1)}" if match else None


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


def _from_torch() -> DetectedHardware | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = torch.cuda.get_device_properties(0)
    return DetectedHardware(nvidia_id(props.name), "gpu", props.name, "torch", torch.cuda.device_count(),
                            int(props.total_memory), f"{props.major}.{props.minor}")


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
    allow_torch: bool = False,
) -> DetectedHardware:
    """The accelerator of this machine. `allow_torch` is off by default: the serving path never imports torch."""
    env = os.environ if env is None else env
    found = (_from_nvml() if use_nvml else None) or _from_nvidia_smi(run) or (_from_torch() if allow_torch else None)
    found = found or _from_tpu(env, exists, find_spec)
    if found:
        return found
    return _cpu(read_cpuinfo() if cpuinfo is None else cpuinfo)
