"""Native Keras 3 blocks of the TF-Slim MobileNets, built from the resolved architecture table.

The same table the PyTorch module is built from (:mod:`mobilevec.models.specs`) drives these
layers, so the two cannot disagree about widths, strides or activations. Numerics follow
TF-Slim: TF 'SAME' padding (Keras ``padding="same"`` pads the odd pixel after, as TF does, on
every backend), BatchNorm ε = 1e-3 with ``momentum`` in TF's (= Keras') convention,
hard-swish ``x * relu6(x + 3) / 6`` and the squeeze-excite gate ``relu6(x + 3) * 0.16667``.

Every block reads its weights from TF-Slim variables (TF layout: conv kernels
``[kh, kw, in, out]``, depthwise kernels ``[kh, kw, C, 1]``, which is also Keras' layout) with
:meth:`set_tf_variables`. Inputs are NHWC (``channels_last``).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

from ..models.layers import BN_EPSILON, SE_GATE_SCALE
from ..models.specs import Activation, ResolvedBlock, ResolvedConv, ResolvedLayer

_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras' weight order
# Every kernel is overwritten (TF-Slim variables, or a saved .keras file), so no random
# initialiser runs: on JAX each new kernel shape of glorot_uniform compiles a program (~0.5 s).
_PLACEHOLDER_INIT = "zeros"


def activate(x, name: Activation):
    """TF-Slim's activations with ``keras.ops``, written out so every backend computes the
    same formula (Keras' own hard-swish is backend-specific code)."""
    if name == "relu":
        return ops.relu(x)
    if name == "relu6":
        return ops.relu6(x)
    if name == "hard_swish":
        return x * ops.relu6(x + 3.0) * (1.0 / 6.0)
    if name == "identity":
        return x
    raise ValueError(f"unknown activation {name!r}")


def _keras_name(scope: str) -> str:
    # Keras layer names may not contain "/"; the TF-Slim scope stays readable.
    return scope.replace("/", "_")


def _take(variables: Mapping[str, np.ndarray], name: str, shape: tuple) -> np.ndarray:
    """Variable ``name`` as float32 of exactly ``shape`` (a clear error otherwise)."""
    if name not in variables:
        raise KeyError(f"TF-Slim variable {name} is missing")
    array = np.asarray(variables[name], dtype=np.float32)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"TF-Slim variable {name} has shape {array.shape}, the Keras layer "
                         f"expects {tuple(shape)}")
    return array


class ConvBnAct(keras.layers.Layer):
    """Convolution (full or depthwise) → BatchNorm (or a bias when there is none) → activation.

    ``scope`` is the TF-Slim scope (``MobilenetV2/expanded_conv_3/depthwise``); the
    layer's variables are read from ``{scope}/weights`` (or ``depthwise_weights``),
    ``{scope}/BatchNorm/*`` or ``{scope}/biases``.
    """

    def __init__(self, scope: str, in_channels: int, out_channels: int, kernel: int = 1,
                 stride: int = 1, act: Activation = "relu6", batch_norm: bool = True,
                 depthwise: bool = False, momentum: float = 0.997, **kwargs):
        super().__init__(name=_keras_name(scope), **kwargs)
        self.scope, self.act, self.depthwise = scope, act, depthwise
        common = dict(kernel_size=kernel, strides=stride, padding="same",
                      data_format="channels_last", use_bias=not batch_norm, dtype=self.dtype_policy)
        if depthwise:
            self.conv = keras.layers.DepthwiseConv2D(
                name="depthwise", depthwise_initializer=_PLACEHOLDER_INIT, **common)
        else:
            self.conv = keras.layers.Conv2D(out_channels, name="conv",
                                            kernel_initializer=_PLACEHOLDER_INIT, **common)
        self.conv.build((None, None, None, in_channels))
        self.bn = None
        if batch_norm:
            self.bn = keras.layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON,
                                                      momentum=momentum, name="BatchNorm",
                                                      dtype=self.dtype_policy)
            self.bn.build((None, None, None, out_channels))
        self.built = True

    def call(self, x, training=None):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return activate(x, self.act)

    def set_tf_variables(self, variables: Mapping[str, np.ndarray]) -> None:
        kernel_name = "depthwise_weights" if self.depthwise else "weights"
        values = [_take(variables, f"{self.scope}/{kernel_name}", self.conv.kernel.shape)]
        if self.bn is None:
            values.append(_take(variables, f"{self.scope}/biases", self.conv.bias.shape))
        self.conv.set_weights(values)
        if self.bn is not None:
            self.bn.set_weights([_take(variables, f"{self.scope}/BatchNorm/{v}",
                                       self.bn.gamma.shape) for v in _BN_VARIABLES])


class SqueezeExcite(keras.layers.Layer):
    """Global mean → 1×1 reduce (bias) + ReLU → 1×1 expand (bias) → relu6(s + 3) · 0.16667 gate.

    Variables: ``{scope}/Conv/{weights,biases}`` (reduce), ``{scope}/Conv_1/...`` (expand).
    """

    def __init__(self, scope: str, channels: int, squeeze_channels: int, **kwargs):
        super().__init__(name=_keras_name(scope), **kwargs)
        self.scope = scope
        conv = dict(kernel_size=1, data_format="channels_last", dtype=self.dtype_policy,
                    kernel_initializer=_PLACEHOLDER_INIT)
        self.reduce = keras.layers.Conv2D(squeeze_channels, name="Conv", **conv)
        self.expand = keras.layers.Conv2D(channels, name="Conv_1", **conv)
        self.reduce.build((None, 1, 1, channels))
        self.expand.build((None, 1, 1, squeeze_channels))
        self.built = True

    def call(self, x, training=None):
        s = ops.mean(x, axis=(1, 2), keepdims=True)
        s = self.expand(ops.relu(self.reduce(s)))
        return x * (ops.relu6(s + 3.0) * SE_GATE_SCALE)

    def set_tf_variables(self, variables: Mapping[str, np.ndarray]) -> None:
        for conv in (self.reduce, self.expand):
            prefix = f"{self.scope}/{conv.name}"
            conv.set_weights([_take(variables, f"{prefix}/weights", conv.kernel.shape),
                              _take(variables, f"{prefix}/biases", conv.bias.shape)])


class InvertedResidual(keras.layers.Layer):
    """TF-Slim ``expanded_conv``: [1×1 expand] → k×k depthwise → [SE] → 1×1 linear project
    (+ the input when the stride is 1 and the width is unchanged)."""

    def __init__(self, scope: str, block: ResolvedBlock, momentum: float = 0.997, **kwargs):
        super().__init__(name=_keras_name(scope), **kwargs)
        spec, policy = block.spec, self.dtype_policy
        self.expand = None
        if block.has_expand:
            self.expand = ConvBnAct(f"{scope}/expand", block.in_channels,
                                    block.expanded_channels, act=spec.act, momentum=momentum,
                                    dtype=policy)
        self.depthwise = ConvBnAct(f"{scope}/depthwise", block.expanded_channels,
                                   block.expanded_channels, spec.kernel, spec.stride, spec.act,
                                   depthwise=True, momentum=momentum, dtype=policy)
        self.squeeze_excite = None
        if block.squeeze_channels:
            self.squeeze_excite = SqueezeExcite(f"{scope}/squeeze_excite",
                                                block.expanded_channels,
                                                block.squeeze_channels, dtype=policy)
        self.project = ConvBnAct(f"{scope}/project", block.expanded_channels,
                                 block.out_channels, act="identity", momentum=momentum,
                                 dtype=policy)
        self.residual = block.has_residual
        self.built = True

    def call(self, x, training=None):
        y = x if self.expand is None else self.expand(x, training=training)
        y = self.depthwise(y, training=training)
        if self.squeeze_excite is not None:
            y = self.squeeze_excite(y, training=training)
        y = self.project(y, training=training)
        return x + y if self.residual else y

    def set_tf_variables(self, variables: Mapping[str, np.ndarray]) -> None:
        for part in (self.expand, self.depthwise, self.squeeze_excite, self.project):
            if part is not None:
                part.set_tf_variables(variables)


class GlobalPool(keras.layers.Layer):
    """Mean over H and W, keeping a 1×1 map so later 1×1 convs apply (V3's Conv_2)."""

    def call(self, x, training=None):
        return ops.mean(x, axis=(1, 2), keepdims=True)


def build_blocks(layers: tuple[ResolvedLayer, ...], root_scope: str, momentum: float,
                 dtype=None) -> list[keras.layers.Layer]:
    """One built Keras layer per row of a resolved architecture table, in network order.

    ``momentum`` is the BatchNorm moving-average decay (TF convention, which Keras shares).
    The kernels hold zeros until :func:`set_tf_variables` (or loading a saved model) fills
    them.
    """
    blocks: list[keras.layers.Layer] = []
    for layer in layers:
        scope = f"{root_scope}/{layer.spec.scope}"
        if isinstance(layer, ResolvedConv):
            s = layer.spec
            blocks.append(ConvBnAct(scope, layer.in_channels, layer.out_channels, s.kernel,
                                    s.stride, s.act, s.batch_norm, momentum=momentum,
                                    dtype=dtype))
        elif isinstance(layer, ResolvedBlock):
            blocks.append(InvertedResidual(scope, layer, momentum=momentum, dtype=dtype))
        else:
            blocks.append(GlobalPool(name=_keras_name(scope), dtype=dtype))
    return blocks


def set_tf_variables(blocks: list[keras.layers.Layer],
                     variables: Mapping[str, np.ndarray]) -> None:
    """Fill ``blocks`` (from :func:`build_blocks`) with TF-Slim variables (TF layout)."""
    for block in blocks:
        if hasattr(block, "set_tf_variables"):
            block.set_tf_variables(variables)
