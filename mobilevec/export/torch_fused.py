"""A :class:`~mobilevec.export.fused.FusedNet` as a plain PyTorch module (inference only).

BatchNorm, the input scaling and the SE gate constants are folded (see
:mod:`mobilevec.export.fused`), so a forward pass is convolutions, activations, one mean
per squeeze-excite and the residual adds: what the ``torch`` engine runs in channels-last
under ``torch.inference_mode``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import make_activation
from .fused import FusedBlock, FusedConv, FusedNet


class _Conv(nn.Module):
    def __init__(self, c: FusedConv):
        super().__init__()
        top, left, bottom, right = c.pads
        symmetric = top == bottom and left == right
        self.conv = nn.Conv2d(c.weight.shape[1] * c.groups, c.out_channels, c.kernel,
                              c.stride, padding=(top, left) if symmetric else 0,
                              groups=c.groups)
        self.conv.weight.data = torch.from_numpy(c.weight.copy())
        self.conv.bias.data = torch.from_numpy(c.bias.copy())
        self.pad = None if symmetric else (left, right, top, bottom)
        self.input_offset = c.input_offset
        self.act = make_activation(c.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_offset:
            x = x + self.input_offset
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.act(self.conv(x))


class _Block(nn.Module):
    def __init__(self, b: FusedBlock):
        super().__init__()
        self.expand = _Conv(b.expand) if b.expand else nn.Identity()
        self.depthwise = _Conv(b.depthwise)
        se = b.squeeze_excite
        self.se = nn.Sequential(_Conv(se.reduce), _Conv(se.expand)) if se else None
        self.project = _Conv(b.project)
        self.residual = b.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = y * self.se(y.mean((2, 3), keepdim=True))
        y = self.project(y)
        return x + y if self.residual else y


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class FusedModule(nn.Module):
    """``forward(x)``: float NCHW in [0, 1] at ``net.image_size`` → ``(N, num_features)``."""

    def __init__(self, net: FusedNet):
        super().__init__()
        self.image_size = net.image_size
        self.num_features = net.num_features
        layers: list[nn.Module] = []
        for layer in net.layers:
            if isinstance(layer, FusedConv):
                layers.append(_Conv(layer))
            elif isinstance(layer, FusedBlock):
                layers.append(_Block(layer))
            else:
                layers.append(_Pool())
        self.layers = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)
