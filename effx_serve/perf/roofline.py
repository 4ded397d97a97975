"""Roofline analysis: per-layer and whole-model FLOPs W, bytes Q, intensity I = W/Q, predicted latency.

Performance model (the paper's Eq. 1): latency = W / (E * min(I * b, C_max)), b the memory
bandwidth, C_max the peak rate for the precision, E the achieved fraction of the ideal rate.
W counts 2 FLOPs per multiply-accumulate (the paper's "FLOPs" column counts MACs). Q counts each
layer's weights once plus its input and output activations, with BatchNorm and activations fused
into the convolution before them, as inference compilers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from effx_serve.core.errors import UserError
from effx_serve.hardware.table import PRECISION_BYTES, Hardware
from training.arch.plan import Layer, expand
from training.arch.spec import ModelSpec


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
