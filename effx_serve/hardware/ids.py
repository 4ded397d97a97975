"""Hardware ids and classes: the names by which latency records, families and ceilings know a machine.

An id names one kind of accelerator (`nvidia-h200`, `tpu-v3`, `cpu-amd-epyc-7b13`); its class (gpu, tpu,
cpu) picks the family that serves it. Everything here is pure string work plus reading /proc/cpuinfo.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

_KNOWN_NVIDIA = re.compile(r"\b(gb200|b200|b100|h200|h100|h800|gh200|a100|a800|a40|a30|a10g|a10|l40s|l40|l4|v100|t4|p100|p40|k80)\b")
_TPU_TYPE = re.compile(r"^(v\d+[a-z]*?)(?:litepod|pod)?(?:-\d+)?$")


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


def hardware_class(hardware_id: str) -> str:
    """cpu-..., nvidia-... and tpu-... ids to the class whose family serves them."""
    prefix = hardware_id.split("-", 1)[0]
    return {"cpu": "cpu", "nvidia": "gpu", "tpu": "tpu"}.get(prefix, "cpu")


def host_cpu_id() -> str:
    """The hardware id of the CPU this process runs on."""
    return cpu_hardware_id(cpu_model_name())
