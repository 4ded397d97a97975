"""A GPU probe through torch, for machines whose NVIDIA driver has neither NVML bindings nor nvidia-smi on PATH.

Kept apart from `detect` so that detection (on the serving path) never imports torch; the CLI passes it
to `detect` when asked (`effx-serve hardware --allow-torch`).
"""

from __future__ import annotations

import importlib.util

from effx_serve.hardware.detect import DetectedHardware
from effx_serve.hardware.ids import nvidia_id


def detect_cuda() -> DetectedHardware | None:
    """The first CUDA device torch sees, or None (no torch, no CUDA)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = torch.cuda.get_device_properties(0)
    return DetectedHardware(nvidia_id(props.name), "gpu", props.name, "torch", torch.cuda.device_count(),
                            int(props.total_memory), f"{props.major}.{props.minor}")
