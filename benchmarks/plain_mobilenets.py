"""Standard PyTorch MobileNets (torchvision's layout) as benchmark peers: random weights.

What a PyTorch user writes without mobilevec: symmetric ``padding=(k-1)//2`` (not TF
'SAME'), ``Conv2d → BatchNorm2d → activation`` unfused, torchvision's SE (Hardsigmoid).
Widths follow torchvision's ``mobilenet_v2()`` and ``mobilenet_v3_small(width_mult=0.75)``
with the feature head of the TF Hub modules (1280-d, 1024-d), so the work per image
matches the seed models. Only used for timing: the numbers they compute are meaningless.
"""

from __future__ import annotations

import torch
from torch import nn


def _div8(v: float) -> int:
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


def _cba(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        squeeze = _div8(c // 4)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))


class _Block(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool,
                 act: type[nn.Module], stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_cba(cin, expanded, act=act))
        layers.append(_cba(expanded, expanded, k, stride, expanded, act))
        if se:
            layers.append(_SE(expanded))
        layers.append(_cba(expanded, cout, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class PlainMobileNetV2(nn.Module):
    """torchvision ``mobilenet_v2()`` features + global average pool → (N, 1280)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [_cba(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
            for i in range(n):
                layers.append(_Block(cin, 3, cin * t, c, False, nn.ReLU6, s if i == 0 else 1))
                cin = c
        layers.append(_cba(cin, 1280))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


class PlainMobileNetV3Small(nn.Module):
    """torchvision ``mobilenet_v3_small(width_mult=0.75)`` features, pool, 1024-d head."""

    def __init__(self, width: float = 0.75):
        super().__init__()
        re, hs = nn.ReLU, nn.Hardswish
        conf = [(16, 3, 16, 16, True, re, 2), (16, 3, 72, 24, False, re, 2),
                (24, 3, 88, 24, False, re, 1), (24, 5, 96, 40, True, hs, 2),
                (40, 5, 240, 40, True, hs, 1), (40, 5, 240, 40, True, hs, 1),
                (40, 5, 120, 48, True, hs, 1), (48, 5, 144, 48, True, hs, 1),
                (48, 5, 288, 96, True, hs, 2), (96, 5, 576, 96, True, hs, 1),
                (96, 5, 576, 96, True, hs, 1)]
        first = _div8(16 * width)
        layers: list[nn.Module] = [_cba(3, first, 3, 2, act=hs)]
        for cin, k, exp, cout, se, act, s in conf:
            layers.append(_Block(_div8(cin * width), k, _div8(exp * width), _div8(cout * width),
                                 se, act, s))
        last = _div8(96 * width) * 6
        layers.append(_cba(_div8(96 * width), last, act=hs))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(last, 1024), nn.Hardswish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


PLAIN = {"mobilenet_v2_100_224": PlainMobileNetV2,
         "mobilenet_v3_small_075_224": PlainMobileNetV3Small}
