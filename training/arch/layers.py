"""PyTorch layers with the reference's semantics: TF 'same' padding, SE, drop-connect, space-to-batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF 'same': output ceil(size/stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'same' padding for any kernel, stride and input size.

    Symmetric padding goes into the convolution itself; only the asymmetric cases (even kernels,
    stride 2 on even sizes) get an explicit Pad, so the exported graph has no needless copies.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = tf_same_padding(int(x.shape[-2]), k, s)
        left, right = tf_same_padding(int(x.shape[-1]), k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "swish": nn.SiLU}[name](inplace=True)


class ConvBnAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bn: dict, activation: str | None, groups: int = 1):
        layers = [Conv2dSame(cin, cout, kernel, stride, groups=groups), nn.BatchNorm2d(cout, **bn)]
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, activation: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(gates))))


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches per sample (stochastic depth), scaled to keep the expectation."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class SpaceToBatchStage(nn.Module):
    """Run `body` on the tensor rearranged by space-to-batch with block `b`, then undo it.

    Interleaved, as TF's space_to_batch_nd: pixel (b*i + u, b*j + v) goes to sub-image (u, v), so the
    batch grows by b*b and each spatial side shrinks by b. Sides not divisible by b are zero-padded at
    the bottom/right and the output is cropped back to ceil(input / stage stride).
    """

    def __init__(self, body: nn.Module, block: int, stride: int):
        super().__init__()
        self.body = body
        self.block = block
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        c, h, w = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        hp, wp = math.ceil(h / b) * b, math.ceil(w / b) * b
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h))
        x = x.reshape(-1, c, hp // b, b, wp // b, b).permute(3, 5, 0, 1, 2, 4)
        x = self.body(x.reshape(-1, c, hp // b, wp // b))
        c, sh, sw = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        x = x.reshape(b, b, -1, c, sh, sw).permute(2, 3, 4, 0, 5, 1).reshape(-1, c, sh * b, sw * b)
        return x[:, :, : math.ceil(h / self.stride), : math.ceil(w / self.stride)]
