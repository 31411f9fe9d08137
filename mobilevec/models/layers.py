"""Building blocks: TF 'SAME' convolution, conv+BN+activation, squeeze-excite, inverted residual.

Numerics follow TF-Slim: BatchNorm epsilon 1e-3, 'SAME' padding with the odd pixel at the
bottom/right, hard-swish ``x * relu6(x + 3) / 6`` and the SE gate ``relu6(x + 3) * 0.16667``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .specs import Activation, ResolvedBlock

BN_EPSILON = 1e-3
# TF-Slim's gate literal: relu6(x + 3) * 0.16667 (not exactly 1/6; relative gap 2e-5).
SE_GATE_SCALE = 0.16667


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis; the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding for any input size.

    Stride 1 with an odd kernel pads symmetrically, which the convolution does itself;
    otherwise (stride 2) the asymmetric pad depends on the input size and is applied here.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        static = stride == 1 and kernel % 2 == 1
        super().__init__(in_channels, out_channels, kernel, stride,
                         padding=kernel // 2 if static else 0, groups=groups, bias=bias)
        self.dynamic_padding = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def make_activation(name: Activation) -> nn.Module:
    """Activation module by TF-Slim name."""
    factories = {
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "hard_swish": nn.Hardswish,
        "identity": nn.Identity,
    }
    try:
        return factories[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(factories)}") from None


def make_batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF decay 0.997 (TF-Slim training_scope) == torch momentum 0.003; callers may override.
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=0.003)


class ConvBnAct(nn.Module):
    """Convolution → BatchNorm (or a bias when there is none) → activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 act: Activation = "relu6", with_batch_norm: bool = True,
                 depthwise: bool = False):
        super().__init__()
        groups = in_channels if depthwise else 1
        self.conv = SameConv2d(in_channels, out_channels, kernel, stride, groups,
                               bias=not with_batch_norm)
        self.bn = make_batch_norm(out_channels) if with_batch_norm else nn.Identity()
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global mean → 1×1 reduce + ReLU → 1×1 expand → hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)  # TF-Slim squeeze_excite/Conv
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)  # TF-Slim squeeze_excite/Conv_1
        # Keras' port uses exactly 1/6; its reference tests set that here.
        self.gate_scale = SE_GATE_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s)))
        return x * (F.relu6(s + 3.0) * self.gate_scale)


class InvertedResidual(nn.Module):
    """TF-Slim ``expanded_conv``; module names are the TF-Slim sub-scopes."""

    def __init__(self, block: ResolvedBlock):
        super().__init__()
        spec = block.spec
        self.expand = (ConvBnAct(block.in_channels, block.expanded_channels, 1, act=spec.act)
                       if block.has_expand else nn.Identity())
        self.depthwise = ConvBnAct(block.expanded_channels, block.expanded_channels,
                                   spec.kernel, spec.stride, spec.act, depthwise=True)
        self.squeeze_excite = (SqueezeExcite(block.expanded_channels, block.squeeze_channels)
                               if block.squeeze_channels else nn.Identity())
        self.project = ConvBnAct(block.expanded_channels, block.out_channels, 1, act="identity")
        self.residual = block.has_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.squeeze_excite(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class GlobalAvgPool(nn.Module):
    """Mean over H and W, keeping a 1×1 map so later 1×1 convs apply (V3's Conv_2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)
