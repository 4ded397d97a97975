"""Roofline analysis: per-layer and whole-model FLOPs W, bytes Q, intensity I = W/Q, predicted latency.

Performance model (the paper's Eq. 1): latency = W / (E * min(I * b, C_max)), b the memory
bandwidth, C_max the peak rate for the precision, E the achieved fraction of the ideal rate.
W counts 2 FLOPs per multiply-accumulate (the paper's "FLOPs" column counts MACs). Q counts each
layer's weights once plus its input and output activations, with BatchNorm and activations fused
into the convolution before them, as inference compilers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from effx_serve.errors import UserError
from training.plan import Layer, expand
from training.spec import ModelSpec

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
HOST_ALIASES = ("host", "cpu")


def host_hardware(refresh: bool = False) -> Hardware:
    from effx_serve.ceilings import host_ceilings

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
    key = hardware_id.strip().lower()
    if key in VENDOR_HARDWARE:
        return VENDOR_HARDWARE[key]
    if key in HOST_ALIASES or key.startswith("cpu-"):
        from effx_serve.ceilings import cpu_hardware_id, cpu_model_name

        host_id = cpu_hardware_id(cpu_model_name())
        if key not in HOST_ALIASES and key != host_id:
            raise UserError(f"hardware '{hardware_id}' is a CPU other than this host ({host_id}); ceilings are measured, so run on it")
        return host_hardware()
    known = ", ".join([*VENDOR_HARDWARE, *HOST_ALIASES])
    raise UserError(f"unknown hardware '{hardware_id}' (known: {known})")


@dataclass(frozen=True)
class LayerPoint:
    name: str
    kind: str
    flops: float
    bytes: float
    intensity: float
    attainable: float  # FLOP/s the roofline allows at this intensity
    seconds: float
    bound: str  # "memory" or "compute"


@dataclass(frozen=True)
class ModelRoofline:
    name: str
    resolution: int
    batch: int
    precision: str
    hardware: str
    params: int
    macs: int
    flops: float
    bytes: float
    intensity: float
    ridge: float
    predicted_ms: float  # sum of per-layer roofline times
    whole_model_ms: float  # the whole model as one point on the roofline
    efficiency: float
    layers: list[LayerPoint] = field(default_factory=list)

    def to_dict(self, with_layers: bool = False) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "layers"}
        if with_layers:
            data["layers"] = [p.__dict__ for p in self.layers]
        return data


def layer_traffic(layer: Layer, batch: int, element_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one layer for a batch: weights once (BN folded into a bias), activations per image."""
    flops = 2.0 * layer.macs * batch
    folded_weights = layer.params + layer.bn_params // 2
    return flops, float(element_bytes * (folded_weights + batch * layer.activation_elements))


def attainable(intensity: float, hardware: Hardware, precision: str) -> float:
    return min(intensity * hardware.bandwidth, hardware.peak_for(precision))


def analyze(
    spec: ModelSpec,
    hardware: Hardware,
    batch: int = 1,
    precision: str = "fp32",
    resolution: int | None = None,
    efficiency: float = 1.0,
) -> ModelRoofline:
    if batch < 1:
        raise UserError(f"batch must be at least 1, got {batch}")
    if not 0 < efficiency <= 1:
        raise UserError(f"efficiency E must be in (0, 1], got {efficiency}")
    peak = hardware.peak_for(precision)
    element_bytes = PRECISION_BYTES[precision]
    plan = expand(spec, resolution)
    points = []
    for layer in plan.layers():
        flops, moved = layer_traffic(layer, batch, element_bytes)
        intensity = flops / moved
        rate = attainable(intensity, hardware, precision)
        points.append(
            LayerPoint(layer.name, layer.kind, flops, moved, intensity, rate, moved / hardware.bandwidth if flops == 0 else flops / (efficiency * rate), "compute" if rate >= peak else "memory")
        )
    flops = sum(p.flops for p in points)
    moved = sum(p.bytes for p in points)
    intensity = flops / moved
    return ModelRoofline(
        name=spec.name,
        resolution=plan.resolution,
        batch=batch,
        precision=precision,
        hardware=hardware.id,
        params=plan.params,
        macs=plan.macs,
        flops=flops,
        bytes=moved,
        intensity=intensity,
        ridge=hardware.ridge(precision),
        predicted_ms=1e3 * sum(p.seconds for p in points),
        whole_model_ms=1e3 * flops / (efficiency * attainable(intensity, hardware, precision)),
        efficiency=efficiency,
        layers=points,
    )
