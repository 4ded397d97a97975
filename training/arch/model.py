"""The PyTorch EfficientNet / EfficientNet-X builder: a `ModelSpec` in, an `nn.Module` out.

Every structural decision comes from `training.arch.plan`, so the module's parameter count equals the
plan's count by construction (a test checks it for the reference models).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.arch.layers import ConvBnAct, SpaceToBatchStage, SqueezeExcite, drop_connect
from training.arch.plan import BlockPlan, NetworkPlan, expand
from training.arch.spec import ModelSpec


class MBConvBlock(nn.Module):
    """MBConv (expand 1x1, depthwise, SE, project) or fused MBConv (k x k conv, SE, project).

    A block that starts the space-to-depth region first runs the learned 2x2 stride-2 conv.
    """

    def __init__(self, plan: BlockPlan, bn: dict):
        super().__init__()
        self.residual = plan.residual
        self.drop_rate = plan.drop_path
        act = plan.activation
        layers: list[nn.Module] = []
        channels = plan.in_channels
        if plan.s2d_channels:
            layers.append(ConvBnAct(channels, plan.s2d_channels, 2, 2, bn, act))
            channels = plan.s2d_channels
        if plan.fused:
            layers.append(ConvBnAct(channels, plan.mid_channels, plan.kernel, plan.stride, bn, act))
        else:
            if plan.has_expand:
                layers.append(ConvBnAct(channels, plan.mid_channels, 1, 1, bn, act))
            layers.append(ConvBnAct(plan.mid_channels, plan.mid_channels, plan.kernel, plan.stride, bn, act, groups=plan.mid_channels))
        if plan.se_channels:
            layers.append(SqueezeExcite(plan.mid_channels, plan.se_channels, act))
        layers.append(ConvBnAct(plan.mid_channels, plan.out_channels, 1, 1, bn, None))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.residual:
            out = drop_connect(out, self.drop_rate, self.training) + x
        return out


class EfficientNet(nn.Module):
    def __init__(self, spec: ModelSpec, plan: NetworkPlan | None = None):
        super().__init__()
        plan = plan or expand(spec)
        self.spec = spec
        bn = dict(eps=spec.bn_epsilon, momentum=spec.bn_momentum)
        self.stem = ConvBnAct(3, plan.stem_channels, 3, 2, bn, spec.activation)
        stages = []
        for stage in plan.stages:
            body = nn.Sequential(*(MBConvBlock(block, bn) for block in stage.blocks))
            if stage.space_to_batch:
                body = SpaceToBatchStage(body, stage.space_to_batch, spec.stages[stage.index].stride)
            stages.append(body)
        self.stages = nn.Sequential(*stages)
        last = plan.stages[-1].blocks[-1].out_channels
        self.head = ConvBnAct(last, plan.head_channels, 1, 1, bn, spec.activation)
        self.dropout = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(plan.head_channels, spec.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv N(0, sqrt(2/fan_out)) as the reference; the classifier starts at zero.

        The reference's dense init U(+-1/sqrt(classes)) is small for ImageNet's 1000 classes, but for 10
        classes it gives initial logits of several units (loss ~5 instead of ln 10), and in our short runs
        on the demo data both it and a small U(+-1/sqrt(fan_in)) init trained to lower accuracy than zero
        weights. Zero weights start every class equal; the backbone gets gradients from the second step on.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                fan_out = kh * kw * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def zero_init_residual(self) -> None:
        """Start every residual block as the identity: the scale of its last BN at zero (Goyal et al. 2017, for short or
        large-batch runs). Each extra block of a deeper model then adds nothing at first instead of noise, so a few epochs
        do not penalise depth for training more slowly (docs/scaling.md measures it in the proxy)."""
        for module in self.modules():
            if isinstance(module, MBConvBlock) and module.residual:
                nn.init.zeros_(module.body[-1][1].weight)  # the projection's ConvBnAct: (conv, BN)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.fc(self.dropout(x))


def build_model(spec: ModelSpec) -> EfficientNet:
    return EfficientNet(spec)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers, so they are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
