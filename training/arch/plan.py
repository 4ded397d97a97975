"""Expand a `ModelSpec` into concrete blocks and layers, following the reference construction.

This is the single place that applies the reference's rules (width/depth rounding, the
space-to-depth region with its x4 channels and halved kernels, the d2 stride rule, the SE width
rule with se_coefficient and the //4, residual conditions, the linear drop-connect schedule).
The PyTorch builder, the parameter/MAC counters and the roofline all read this plan, so they
cannot disagree with each other. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from training.arch.spec import ModelSpec
from training.errors import SpecError


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv or fused-MBConv block, fully resolved."""

    index: int
    stage: int
    in_channels: int  # what the block really receives
    nominal_in: int  # the reference's block_args.input_filters (drives expansion and SE width)
    mid_channels: int
    out_channels: int
    kernel: int
    stride: int
    fused: bool
    has_expand: bool  # separate 1x1 expansion conv (MBConv with expand != 1)
    s2d_channels: int  # output channels of the learned space-to-depth conv; 0 = none
    se_channels: int  # SE reduce width; 0 = no SE
    activation: str
    residual: bool
    drop_path: float
    in_size: int  # spatial size of the block input (inside a space-to-batch stage: a sub-image)
    out_size: int


@dataclass(frozen=True)
class StagePlan:
    index: int
    blocks: tuple[BlockPlan, ...]
    space_to_batch: int  # block size; 0 = none
    in_size: int  # spatial size entering the stage (whole image)
    out_size: int


@dataclass(frozen=True)
class Layer:
    """One operator as the roofline sees it. Shapes are per image; BN and activation are fused."""

    name: str
    kind: str  # conv, dwconv, se_reduce, se_expand, fc, and memory-only: pool, scale, add, s2b, b2s
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_size: int
    out_size: int
    params: int  # weights and biases
    bn_params: int  # gamma and beta of the BatchNorm folded after it
    batch_factor: int = 1  # images per input image (space-to-batch multiplies the batch)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per input image."""
        if self.kind in ("conv", "se_reduce", "se_expand", "fc"):
            per_pixel = self.in_channels * self.kernel * self.kernel * self.out_channels
        elif self.kind == "dwconv":
            per_pixel = self.kernel * self.kernel * self.out_channels
        else:
            return 0
        return per_pixel * self.out_size * self.out_size * self.batch_factor

    @property
    def activation_elements(self) -> int:
        """Input plus output elements per input image (what the layer reads and writes besides weights)."""
        reads = self.in_channels * self.in_size**2
        if self.kind == "add":
            reads *= 2  # two inputs
        elif self.kind == "scale":
            reads += self.in_channels  # the tensor and its per-channel gates
        return (reads + self.out_channels * self.out_size**2) * self.batch_factor


@dataclass(frozen=True)
class NetworkPlan:
    spec: ModelSpec
    resolution: int
    stem_channels: int
    stem_size: int
    stages: tuple[StagePlan, ...]
    head_channels: int

    @property
    def blocks(self) -> list[BlockPlan]:
        return [block for stage in self.stages for block in stage.blocks]

    @property
    def final_size(self) -> int:
        return self.stages[-1].out_size

    @cached_property
    def _layer_list(self) -> tuple[Layer, ...]:
        return tuple(_layers(self))

    def layers(self) -> list[Layer]:
        return list(self._layer_list)

    @property
    def params(self) -> int:
        return sum(layer.params + layer.bn_params for layer in self._layer_list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self._layer_list)


def _same_out(size: int, stride: int) -> int:
    """TF 'same' padding: the output is ceil(input / stride) whatever the kernel."""
    return -(-size // stride)


def total_stride(spec: ModelSpec) -> int:
    stride = 2  # stem
    for stage in spec.stages:
        stride *= 2 if stage.space_to_depth == 1 else stage.stride
        if stage.space_to_depth == 2 and stage.stride == 2:
            stride //= 2  # the d2 rule: this stride is taken by the space-to-depth conv
    return stride


def expand(spec: ModelSpec, resolution: int | None = None) -> NetworkPlan:
    """Resolve every block of `spec` at `resolution` (default: the spec's own)."""
    resolution = spec.resolution if resolution is None else resolution
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        raise SpecError(f"resolution must be an integer, got {resolution!r}")
    stride = total_stride(spec)
    if resolution < stride:
        raise SpecError(
            f"resolution {resolution} is below the network's total stride {stride}: "
            f"the last downsampling would see a 1x1 map; use at least {stride}"
        )
    stem_channels = spec.filters(spec.stem_filters)
    size = _same_out(resolution, 2)
    channels = stem_channels
    count = sum(spec.repeats(stage.repeats) for stage in spec.stages)
    stages: list[StagePlan] = []
    for stage_index, stage in enumerate(spec.stages):
        nominal_in = spec.filters(stage.in_filters)
        nominal_out = spec.filters(stage.out_filters)
        first = dict(nominal_in=nominal_in, out=nominal_out, kernel=stage.kernel, stride=stage.stride, s2d=False)
        rest = dict(nominal_in=nominal_out, out=nominal_out, kernel=stage.kernel, stride=1, s2d=False)
        if stage.space_to_depth:
            factor = 4 // (stage.stride * stage.stride)
            kernel = (stage.kernel + 1) // 2 if factor > 1 else stage.kernel
            first.update(nominal_in=nominal_in * factor, out=nominal_out * factor, kernel=kernel, stride=1)
            first["s2d"] = stage.space_to_depth == 1
            if stage.stride == 1:  # the region goes on through the rest of the stage
                rest.update(nominal_in=nominal_out * factor, out=nominal_out * factor, kernel=kernel)
        stage_in = size
        size = _same_out(size, stage.space_to_batch or 1)  # sub-image side, padded to a multiple of the block
        blocks = []
        for repeat in range(spec.repeats(stage.repeats)):
            args = first if repeat == 0 else rest
            in_size = size
            size = _same_out(_same_out(size, 2) if args["s2d"] else size, args["stride"])
            index = sum(len(s.blocks) for s in stages) + repeat
            blocks.append(_resolve_block(spec, stage, dict(args, stage=stage_index, in_channels=channels, in_size=in_size, out_size=size), index, count))
            channels = args["out"]
        # Whole-image side after the stage (space-to-batch crops back to it).
        size = _same_out(stage_in, 2 if first["s2d"] else first["stride"])
        stages.append(StagePlan(stage_index, tuple(blocks), stage.space_to_batch, stage_in, size))
    return NetworkPlan(
        spec=spec,
        resolution=resolution,
        stem_channels=stem_channels,
        stem_size=_same_out(resolution, 2),
        stages=tuple(stages),
        head_channels=spec.filters(spec.head_filters),
    )


def _resolve_block(spec: ModelSpec, stage, b: dict, index: int, count: int) -> BlockPlan:
    in_channels = b["in_channels"]
    after_s2d = b["nominal_in"] if b["s2d"] else in_channels
    has_expand = not stage.fused and stage.expand != 1
    # Without an expansion conv the depthwise conv keeps the channels it receives.
    mid = b["nominal_in"] * stage.expand if (stage.fused or has_expand) else after_s2d
    se_channels = 0
    if stage.se_ratio is not None:
        se_channels = int(b["nominal_in"] * (stage.se_ratio * spec.se_coefficient))
        if b["s2d"]:
            se_channels //= 4  # the ratio is meant for the filters before space-to-depth
        se_channels = max(1, se_channels)
    residual = stage.skip and b["stride"] == 1 and not b["s2d"] and in_channels == b["out"]
    return BlockPlan(
        index=index,
        stage=b["stage"],
        in_channels=in_channels,
        nominal_in=b["nominal_in"],
        mid_channels=mid,
        out_channels=b["out"],
        kernel=b["kernel"],
        stride=b["stride"],
        fused=stage.fused,
        has_expand=has_expand,
        s2d_channels=b["nominal_in"] if b["s2d"] else 0,
        se_channels=se_channels,
        activation=stage.activation or spec.activation,
        residual=residual,
        drop_path=spec.drop_connect * index / count,
        in_size=b["in_size"],
        out_size=b["out_size"],
    )


def _conv(name, kind, cin, cout, k, stride, size_in, size_out, bias=False, bn=True, bf=1) -> Layer:
    weights = cin * cout * k * k if kind != "dwconv" else cout * k * k
    return Layer(
        name=name,
        kind=kind,
        in_channels=cin,
        out_channels=cout,
        kernel=k,
        stride=stride,
        in_size=size_in,
        out_size=size_out,
        params=weights + (cout if bias else 0),
        bn_params=2 * cout if bn else 0,
        batch_factor=bf,
    )


def _memory(name, kind, channels, size_in, size_out=None, bf=1) -> Layer:
    size_out = size_in if size_out is None else size_out
    return Layer(name, kind, channels, channels, 1, 1, size_in, size_out, 0, 0, bf)


def block_layers(block: BlockPlan, bf: int = 1) -> list[Layer]:
    name = f"blocks.{block.index}"
    layers = []
    size = block.in_size
    channels = block.in_channels
    if block.s2d_channels:
        out = _same_out(size, 2)
        layers.append(_conv(f"{name}.s2d", "conv", channels, block.s2d_channels, 2, 2, size, out, bf=bf))
        size, channels = out, block.s2d_channels
    if block.fused:
        layers.append(_conv(f"{name}.fused", "conv", channels, block.mid_channels, block.kernel, block.stride, size, block.out_size, bf=bf))
    else:
        if block.has_expand:
            layers.append(_conv(f"{name}.expand", "conv", channels, block.mid_channels, 1, 1, size, size, bf=bf))
        layers.append(_conv(f"{name}.dw", "dwconv", block.mid_channels, block.mid_channels, block.kernel, block.stride, size, block.out_size, bf=bf))
    size = block.out_size
    if block.se_channels:
        mid, se = block.mid_channels, block.se_channels
        layers += [
            _memory(f"{name}.se.pool", "pool", mid, size, 1, bf=bf),
            _conv(f"{name}.se.reduce", "se_reduce", mid, se, 1, 1, 1, 1, bias=True, bn=False, bf=bf),
            _conv(f"{name}.se.expand", "se_expand", se, mid, 1, 1, 1, 1, bias=True, bn=False, bf=bf),
            _memory(f"{name}.se.scale", "scale", mid, size, bf=bf),
        ]
    layers.append(_conv(f"{name}.project", "conv", block.mid_channels, block.out_channels, 1, 1, size, size, bf=bf))
    if block.residual:
        layers.append(_memory(f"{name}.add", "add", block.out_channels, size, bf=bf))
    return layers


def _layers(plan: NetworkPlan) -> list[Layer]:
    spec = plan.spec
    layers = [_conv("stem", "conv", 3, plan.stem_channels, 3, 2, plan.resolution, plan.stem_size)]
    for stage in plan.stages:
        bf = stage.space_to_batch**2 if stage.space_to_batch else 1
        if stage.space_to_batch:
            first, last = stage.blocks[0], stage.blocks[-1]
            layers.append(_memory(f"stages.{stage.index}.s2b", "s2b", first.in_channels, stage.in_size, stage.in_size))
        for block in stage.blocks:
            layers += block_layers(block, bf)
        if stage.space_to_batch:
            layers.append(_memory(f"stages.{stage.index}.b2s", "b2s", last.out_channels, stage.out_size, stage.out_size))
    size = plan.final_size
    channels = plan.stages[-1].blocks[-1].out_channels
    layers.append(_conv("head", "conv", channels, plan.head_channels, 1, 1, size, size))
    layers.append(_memory("head.pool", "pool", plan.head_channels, size, 1))
    layers.append(_conv("fc", "fc", plan.head_channels, spec.num_classes, 1, 1, 1, 1, bias=True, bn=False))
    return layers
