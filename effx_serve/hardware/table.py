"""The hardware table: what a roofline needs of a chip (peak FLOP/s per precision, memory bandwidth), from vendor figures.

Measured ceilings of the machine this runs on (hardware.ceilings) use the same `Hardware` record.
"""

from __future__ import annotations

from dataclasses import dataclass

from effx_serve.core.errors import UserError

PRECISION_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1}
TERA, GIGA = 1e12, 1e9


@dataclass(frozen=True)
class Hardware:
    id: str
    name: str
    kind: str  # gpu, tpu, cpu
    peak: dict[str, float]  # precision -> FLOP/s (dense)
    bandwidth: float  # bytes/s
    source: str

    def peak_for(self, precision: str) -> float:
        if precision not in PRECISION_BYTES:
            raise UserError(f"unknown precision '{precision}' (known: {', '.join(PRECISION_BYTES)})")
        if precision not in self.peak:
            raise UserError(
                f"{self.name} has no {precision} peak figure; choose one of {', '.join(self.peak)}"
            )
        return self.peak[precision]

    def ridge(self, precision: str) -> float:
        """The intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.peak_for(precision) / self.bandwidth


# Vendor figures: dense (no sparsity) peak per chip, HBM bandwidth per chip.
VENDOR_HARDWARE = {
    h.id: h
    for h in (
        Hardware("nvidia-v100", "NVIDIA V100 SXM2", "gpu",
                 {"fp32": 15.7 * TERA, "fp16": 125 * TERA}, 900 * GIGA,
                 "NVIDIA Tesla V100 datasheet (SXM2): 125 TFLOP/s fp16 tensor, 900 GB/s HBM2"),
        Hardware("nvidia-a100", "NVIDIA A100 SXM4 80GB", "gpu",
                 {"fp32": 19.5 * TERA, "tf32": 156 * TERA, "fp16": 312 * TERA, "bf16": 312 * TERA, "int8": 624 * TERA},
                 2039 * GIGA, "NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOP/s bf16 dense, 2,039 GB/s HBM2e"),
        Hardware("nvidia-h100", "NVIDIA H100 SXM5", "gpu",
                 {"fp32": 67 * TERA, "tf32": 494.7 * TERA, "fp16": 989.4 * TERA, "bf16": 989.4 * TERA, "int8": 1979 * TERA},
                 3350 * GIGA, "NVIDIA H100 datasheet (SXM5): 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3"),
        Hardware("nvidia-h200", "NVIDIA H200 SXM", "gpu",
                 {"fp32": 67 * TERA, "tf32": 494.7 * TERA, "fp16": 989.4 * TERA, "bf16": 989.4 * TERA, "int8": 1979 * TERA},
                 4800 * GIGA, "NVIDIA H200 datasheet (SXM): 989 TFLOP/s bf16 dense, 4.8 TB/s HBM3e"),
        Hardware("tpu-v2", "Google TPU v2 (per chip)", "tpu", {"bf16": 46 * TERA}, 700 * GIGA,
                 "Google Cloud TPU v2 system architecture: 46 TFLOP/s bf16 and 700 GB/s HBM per chip (Norrie et al. 2021)"),
        Hardware("tpu-v3", "Google TPU v3 (per chip)", "tpu", {"bf16": 123 * TERA}, 900 * GIGA,
                 "Google Cloud TPU v3 system architecture: 123 TFLOP/s bf16 and 900 GB/s HBM per chip"),
        Hardware("tpu-v4i", "Google TPU v4i", "tpu", {"bf16": 138 * TERA, "int8": 138 * TERA}, 614 * GIGA,
                 "Jouppi et al., ISCA 2021 (TPU v4i): 138 TFLOP/s bf16/int8, 614 GB/s HBM2"),
    )
}
