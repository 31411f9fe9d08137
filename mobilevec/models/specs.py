"""Architecture tables of the TF-Slim MobileNets, and the rules that scale them.

Each family is one table (the TF-Slim ``conv_defs``): a row per layer, named by its
TF-Slim scope. The depth multiplier and TF-Slim's channel rounding are functions applied
to a table (:func:`resolve`); a new variant is a new table or a new multiplier, never new
model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Activation = Literal["relu", "relu6", "hard_swish", "identity"]
# How the depth multiplier touches a layer's width:
#   "scaled"    - make_divisible(channels * multiplier, 8), the TF-Slim default;
#   "fixed"     - never scaled (V3's last conv: ``finegrain_classification_mode``);
#   "grow_only" - scaled only when multiplier > 1 (V2's Conv_1 stays 1280 below 1.0).
WidthRule = Literal["scaled", "fixed", "grow_only"]


@dataclass(frozen=True)
class Conv:
    """A k×k convolution, optionally followed by BatchNorm, then an activation.

    Without batch norm the convolution carries a bias (TF-Slim only creates biases
    when ``normalizer_fn`` is None).
    """

    scope: str
    channels: int
    kernel: int = 1
    stride: int = 1
    act: Activation = "relu6"
    batch_norm: bool = True
    width_rule: WidthRule = "scaled"


@dataclass(frozen=True)
class InvertedResidual:
    """TF-Slim ``expanded_conv``: [1×1 expand] → k×k depthwise → [SE] → 1×1 linear project.

    ``expansion`` multiplies the block's *input* channels (``expand_input_by_factor``);
    the expand conv exists only when the expanded width exceeds the input width.
    """

    scope: str
    expansion: float
    channels: int
    kernel: int = 3
    stride: int = 1
    act: Activation = "relu6"
    squeeze_excite: bool = False
    # V2's first block rounds its expansion to 1, i.e. not at all.
    expansion_divisor: int = 8


@dataclass(frozen=True)
class GlobalPool:
    """Average over the whole spatial extent (TF-Slim ``reduce_to_1x1`` / ``global_pool``)."""

    scope: str = "AvgPool"


Layer = Conv | InvertedResidual | GlobalPool


@dataclass(frozen=True)
class ArchSpec:
    """One TF-Slim network definition: its root scope and its layers in order."""

    name: str
    root_scope: str
    layers: tuple[Layer, ...]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """TF-Slim ``_make_divisible``: nearest multiple of ``divisor``, never 10 % below ``value``."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _v2_table() -> tuple[Layer, ...]:
    blocks: list[Layer] = [
        Conv("Conv", 32, kernel=3, stride=2),
        InvertedResidual("expanded_conv", expansion=1, channels=16, expansion_divisor=1),
    ]
    # (expansion, channels, repeats, first stride) — the MobileNetV2 paper's table 2.
    stages = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]
    index = 1
    for expansion, channels, repeats, stride in stages:
        for repeat in range(repeats):
            blocks.append(InvertedResidual(
                f"expanded_conv_{index}", expansion, channels,
                stride=stride if repeat == 0 else 1))
            index += 1
    blocks += [Conv("Conv_1", 1280, width_rule="grow_only"), GlobalPool()]
    return tuple(blocks)


def _v3_blocks(rows: list[tuple[float, int, int, int, bool, Activation]]) -> list[Layer]:
    """Rows of (expansion, channels, kernel, stride, squeeze_excite, act), named in order."""
    return [
        InvertedResidual("expanded_conv" + (f"_{i}" if i else ""), e, c, k, s, act, se)
        for i, (e, c, k, s, se, act) in enumerate(rows)
    ]


_RE, _HS = "relu", "hard_swish"

V2 = ArchSpec("mobilenet_v2", "MobilenetV2", _v2_table())

V3_SMALL = ArchSpec("mobilenet_v3_small", "MobilenetV3", (
    Conv("Conv", 16, kernel=3, stride=2, act=_HS),
    *_v3_blocks([
        (1, 16, 3, 2, True, _RE),
        (72 / 16, 24, 3, 2, False, _RE),
        (88 / 24, 24, 3, 1, False, _RE),
        (4, 40, 5, 2, True, _HS),
        (6, 40, 5, 1, True, _HS),
        (6, 40, 5, 1, True, _HS),
        (3, 48, 5, 1, True, _HS),
        (3, 48, 5, 1, True, _HS),
        (6, 96, 5, 2, True, _HS),
        (6, 96, 5, 1, True, _HS),
        (6, 96, 5, 1, True, _HS),
    ]),
    Conv("Conv_1", 576, act=_HS),
    GlobalPool(),
    Conv("Conv_2", 1024, act=_HS, batch_norm=False, width_rule="fixed"),
))

V3_LARGE = ArchSpec("mobilenet_v3_large", "MobilenetV3", (
    Conv("Conv", 16, kernel=3, stride=2, act=_HS),
    *_v3_blocks([
        (1, 16, 3, 1, False, _RE),
        (4, 24, 3, 2, False, _RE),
        (3, 24, 3, 1, False, _RE),
        (3, 40, 5, 2, True, _RE),
        (3, 40, 5, 1, True, _RE),
        (3, 40, 5, 1, True, _RE),
        (6, 80, 3, 2, False, _HS),
        (2.5, 80, 3, 1, False, _HS),
        (184 / 80, 80, 3, 1, False, _HS),
        (184 / 80, 80, 3, 1, False, _HS),
        (6, 112, 3, 1, True, _HS),
        (6, 112, 3, 1, True, _HS),
        (6, 160, 5, 2, True, _HS),
        (6, 160, 5, 1, True, _HS),
        (6, 160, 5, 1, True, _HS),
    ]),
    Conv("Conv_1", 960, act=_HS),
    GlobalPool(),
    Conv("Conv_2", 1280, act=_HS, batch_norm=False, width_rule="fixed"),
))


def minimalistic(spec: ArchSpec) -> ArchSpec:
    """TF-Slim's minimalistic V3: no squeeze-excite, no hard-swish, only 3×3 depthwise."""
    layers: list[Layer] = []
    for layer in spec.layers:
        if isinstance(layer, InvertedResidual):
            layer = InvertedResidual(layer.scope, layer.expansion, layer.channels, 3,
                                     layer.stride, "relu", False, layer.expansion_divisor)
        elif isinstance(layer, Conv):
            layer = Conv(layer.scope, layer.channels, layer.kernel, layer.stride, "relu",
                         layer.batch_norm, layer.width_rule)
        layers.append(layer)
    return ArchSpec(spec.name + "_minimalistic", spec.root_scope, tuple(layers))


V3_SMALL_MINIMALISTIC = minimalistic(V3_SMALL)
V3_LARGE_MINIMALISTIC = minimalistic(V3_LARGE)

ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s for s in (V2, V3_SMALL, V3_LARGE, V3_SMALL_MINIMALISTIC, V3_LARGE_MINIMALISTIC)
}


# --- resolved layers: concrete widths after the multiplier ------------------------------

@dataclass(frozen=True)
class ResolvedConv:
    spec: Conv
    in_channels: int
    out_channels: int


@dataclass(frozen=True)
class ResolvedBlock:
    spec: InvertedResidual
    in_channels: int
    expanded_channels: int
    out_channels: int
    squeeze_channels: int | None  # None: no squeeze-excite

    @property
    def has_expand(self) -> bool:
        return self.expanded_channels > self.in_channels

    @property
    def has_residual(self) -> bool:
        return self.spec.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class ResolvedPool:
    spec: GlobalPool
    channels: int


ResolvedLayer = ResolvedConv | ResolvedBlock | ResolvedPool


def scaled_width(channels: int, multiplier: float, rule: WidthRule) -> int:
    """Width of a layer after TF-Slim's depth multiplier (divisible by 8, min 8)."""
    if rule == "fixed" or (rule == "grow_only" and multiplier <= 1.0):
        return channels
    return make_divisible(channels * multiplier, 8, 8)


def resolve(spec: ArchSpec, multiplier: float, in_channels: int = 3) -> tuple[ResolvedLayer, ...]:
    """Apply the depth multiplier and rounding rules; returns every layer's concrete widths."""
    if multiplier <= 0:
        raise ValueError(f"depth multiplier must be positive, got {multiplier}")
    resolved: list[ResolvedLayer] = []
    channels = in_channels
    for layer in spec.layers:
        if isinstance(layer, Conv):
            out = scaled_width(layer.channels, multiplier, layer.width_rule)
            resolved.append(ResolvedConv(layer, channels, out))
        elif isinstance(layer, InvertedResidual):
            out = scaled_width(layer.channels, multiplier, "scaled")
            expanded = make_divisible(channels * layer.expansion, layer.expansion_divisor)
            squeeze = make_divisible(expanded / 4, 8) if layer.squeeze_excite else None
            resolved.append(ResolvedBlock(layer, channels, expanded, out, squeeze))
        else:
            resolved.append(ResolvedPool(layer, channels))
            out = channels
        channels = out
    return tuple(resolved)
