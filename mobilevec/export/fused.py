"""A MobileNet folded for inference: the backend-neutral graph every exporter walks.

:func:`fuse` turns a :class:`~mobilevec.models.mobilenet.MobileNet` into a short list of layers that
mirror its architecture table, with everything that is constant at inference folded away:

- **BatchNorm** into the preceding convolution (``w * γ/√(σ²+ε)``, ``β - μγ/√(σ²+ε)``),
  computed in float64 and stored as float32;
- the hub's **[0, 1] → [-1, 1] scaling** into the first convolution: ``2w`` applied to
  ``x - 0.5`` (:attr:`FusedConv.input_offset`). TF 'SAME' zero-pads the *scaled* image;
  zero pads of ``x - 0.5`` are that same 0, so the fold is exact at the border pixels
  too, where zero padding of ``x`` itself would be wrong. (Not a pad value of 0.5:
  runtimes fuse zero pads into the convolution but run a constant ``Pad`` as a separate
  pass.)
- the **squeeze-excite gate** ``relu6(z + 3) * 0.16667``: the ``+3`` goes into the expand
  convolution's bias (which then ends in a plain ReLU6) and the ``0.16667`` into the
  project convolution's weights, which are linear in the gated input;
- **'SAME' padding** into explicit (top, left, bottom, right) pads, fixed for the export
  image size (the odd pixel goes bottom/right, as in TF).

Every array is float32 in PyTorch layout (OIHW kernels, depthwise ``(C, 1, k, k)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.layers import ConvBnAct, SqueezeExcite, same_padding
from ..models.specs import Activation, ResolvedBlock, ResolvedConv

Pads = tuple[int, int, int, int]  # top, left, bottom, right


def in_squeeze_excite(name: str) -> bool:
    """Whether a layer or exported node belongs to a squeeze-excite gate: exporters name
    them after the TF-Slim scopes (``expanded_conv_3/squeeze_excite/Conv/Conv2D``)."""
    return "/squeeze_excite/" in name


@dataclass(frozen=True)
class FusedConv:
    """Convolution with bias and activation, BN already folded in.

    ``weight`` (O, I/groups, k, k) and ``bias`` (O,) float32; ``pads`` fixed for the
    input size this layer sees, always zero pads; ``input_offset`` is added to the input
    first (-0.5 only for the first convolution, see the module docstring).
    """

    name: str  # TF-Slim scope, e.g. "expanded_conv_3/depthwise"
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    groups: int
    pads: Pads
    act: Activation
    input_offset: float = 0.0

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[-1])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class FusedSqueezeExcite:
    """``x * relu6(expand(relu(reduce(mean(x)))))`` (the gate's ``+3`` is in ``expand``'s
    bias, its scale in the next convolution)."""

    reduce: FusedConv  # act "relu"
    expand: FusedConv  # act "relu6"


@dataclass(frozen=True)
class FusedBlock:
    """Inverted residual: [expand] → depthwise → [squeeze-excite] → project [+ input]."""

    name: str
    expand: FusedConv | None
    depthwise: FusedConv
    squeeze_excite: FusedSqueezeExcite | None
    project: FusedConv
    residual: bool


@dataclass(frozen=True)
class FusedPool:
    """Global average pool (keeps a 1×1 map)."""

    name: str


FusedLayer = FusedConv | FusedBlock | FusedPool


@dataclass(frozen=True)
class FusedNet:
    """The folded network for ``image_size`` × ``image_size`` inputs in [0, 1].

    Running ``layers`` in order on an NCHW float32 batch in [0, 1] gives the model's
    feature map; flattening it gives the ``(N, num_features)`` vectors.
    """

    model: str
    image_size: tuple[int, int]
    num_features: int
    layers: tuple[FusedLayer, ...]

    def convs(self) -> list[FusedConv]:
        """Every convolution, in network order."""
        out: list[FusedConv] = []
        for layer in self.layers:
            if isinstance(layer, FusedConv):
                out.append(layer)
            elif isinstance(layer, FusedBlock):
                se = layer.squeeze_excite
                out += [c for c in (layer.expand, layer.depthwise,
                                    se and se.reduce, se and se.expand, layer.project) if c]
        return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _fold_bn(module: ConvBnAct) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (float64) of conv followed by BN in inference mode."""
    w = _np(module.conv.weight)
    b = _np(module.conv.bias) if module.conv.bias is not None else np.zeros(w.shape[0])
    bn = module.bn
    if isinstance(bn, nn.BatchNorm2d):
        scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
        w = w * scale[:, None, None, None]
        b = (b - _np(bn.running_mean)) * scale + _np(bn.bias)
    return w, b


def _conv(name: str, w: np.ndarray, b: np.ndarray, module: nn.Conv2d, size: tuple[int, int],
          act: Activation) -> tuple[FusedConv, tuple[int, int]]:
    """A :class:`FusedConv` at input ``size``, and its output size."""
    k, s = module.kernel_size[0], module.stride[0]
    top, bottom = same_padding(size[0], k, s)
    left, right = same_padding(size[1], k, s)
    out = (-(-size[0] // s), -(-size[1] // s))  # ceil: TF 'SAME'
    conv = FusedConv(name, w.astype(np.float32), b.astype(np.float32), s, module.groups,
                     (top, left, bottom, right), act)
    return conv, out


def _conv_bn_act(name: str, module: ConvBnAct, size: tuple[int, int], act: Activation,
                 ) -> tuple[FusedConv, tuple[int, int]]:
    w, b = _fold_bn(module)
    return _conv(name, w, b, module.conv, size, act)


def _squeeze_excite(name: str, se: SqueezeExcite) -> tuple[FusedSqueezeExcite, float]:
    """The SE convolutions (gate's +3 folded) and the gate scale left for the next conv."""
    reduce, _ = _conv(f"{name}/Conv", _np(se.reduce.weight), _np(se.reduce.bias), se.reduce,
                      (1, 1), "relu")
    expand, _ = _conv(f"{name}/Conv_1", _np(se.expand.weight), _np(se.expand.bias) + 3.0,
                      se.expand, (1, 1), "relu6")
    return FusedSqueezeExcite(reduce, expand), float(se.gate_scale)


def _block(layer: ResolvedBlock, module, size: tuple[int, int]
           ) -> tuple[FusedBlock, tuple[int, int]]:
    scope, act = layer.spec.scope, layer.spec.act
    expand = None
    if layer.has_expand:
        expand, size = _conv_bn_act(f"{scope}/expand", module.expand, size, act)
    depthwise, size = _conv_bn_act(f"{scope}/depthwise", module.depthwise, size, act)
    se, gate_scale = None, 1.0
    if isinstance(module.squeeze_excite, SqueezeExcite):
        se, gate_scale = _squeeze_excite(f"{scope}/squeeze_excite", module.squeeze_excite)
    w, b = _fold_bn(module.project)
    project, size = _conv(f"{scope}/project", w * gate_scale, b, module.project.conv, size,
                          "identity")
    return FusedBlock(scope, expand, depthwise, se, project, layer.has_residual), size


def _scale_input(conv: FusedConv) -> FusedConv:
    """Fold ``x * 2 - 1`` into the first conv as ``2w`` on ``x - 0.5`` (bias unchanged)."""
    return FusedConv(conv.name, 2.0 * conv.weight, conv.bias, conv.stride, conv.groups,
                     conv.pads, conv.act, input_offset=-0.5)


def fuse(model, image_size: int | tuple[int, int] | None = None) -> FusedNet:
    """Fold ``model`` (a :class:`~mobilevec.models.mobilenet.MobileNet`) for ``image_size`` inputs.

    ``image_size`` defaults to the model's published size (224); pads are fixed for it.
    The classifier, if any, is not part of the feature-vector graph. The result computes
    the same ``(N, num_features)`` vectors as ``model(x)`` up to float32 rounding.
    """
    size = image_size or model.config.image_size
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 32:
        raise ValueError(f"image size must be at least 32x32, got {hw[0]}x{hw[1]}")
    layers: list[FusedLayer] = []
    current = hw
    for layer in model.config.resolved_layers():
        module = model.layers[layer.spec.scope]
        if isinstance(layer, ResolvedConv):
            conv, current = _conv_bn_act(layer.spec.scope, module, current, layer.spec.act)
            layers.append(_scale_input(conv) if not layers else conv)
        elif isinstance(layer, ResolvedBlock):
            block, current = _block(layer, module, current)
            layers.append(block)
        else:
            layers.append(FusedPool(layer.spec.scope))
            current = (1, 1)
    if not isinstance(layers[0], FusedConv):
        raise ValueError(f"{model.config.name}: the first layer must be a convolution to "
                         "fold the input scaling into")
    return FusedNet(model.config.name, hw, model.num_features, tuple(layers))
