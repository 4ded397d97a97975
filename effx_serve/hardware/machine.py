"""This machine as measurements see it: its detected hardware id, its roofline ceilings and its torch device."""

from __future__ import annotations

from dataclasses import dataclass

from effx_serve.hardware.ceilings import device_hardware
from effx_serve.hardware.detect import detect
from effx_serve.hardware.table import Hardware


@dataclass(frozen=True)
class Machine:
    """The detected id (latency records are keyed by it), the roofline hardware (ceilings) and the torch device."""

    hardware_id: str
    hardware: Hardware
    device: str  # torch device for the torch runtimes


def this_machine(refresh_ceilings: bool = False) -> Machine:
    detected = detect()
    hardware = device_hardware(detected, refresh=refresh_ceilings)
    return Machine(detected.id, hardware, "cuda" if detected.hw_class == "gpu" else "cpu")
