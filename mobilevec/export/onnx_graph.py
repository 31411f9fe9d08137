"""A :class:`~mobilevec.export.fused.FusedNet` written as an ONNX graph (opset 17).

The graph is built node by node from the folded layers, not traced: every ``Conv``
carries static asymmetric ``pads`` (TF 'SAME' at the export size, no runtime ``Pad``
shape arithmetic, no ``Pad`` node); the first convolution is preceded by one ``Add`` of
-0.5 (the folded [0, 1] → [-1, 1] scaling, see :mod:`mobilevec.export.fused`). The batch
dimension is dynamic (``batch``); height and width are fixed. With ``nhwc=True`` the input
is ``(N, H, W, 3)`` and one ``Transpose`` starts the graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .fused import FusedBlock, FusedConv, FusedNet, FusedPool

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "features"


class _GraphBuilder:
    """Collects nodes and initializers; names tensors after the TF-Slim scopes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def activation(self, x: str, act: str, name: str) -> str:
        if act == "relu":
            return self.node("Relu", [x], f"{name}/Relu")
        if act == "relu6":
            lo = self.const(f"{name}/Relu6/min", np.array(0.0, np.float32))
            hi = self.const(f"{name}/Relu6/max", np.array(6.0, np.float32))
            return self.node("Clip", [x, lo, hi], f"{name}/Relu6")
        if act == "hard_swish":
            # ONNX HardSwish is x * max(0, min(1, x/6 + 1/2)) == x * relu6(x + 3) / 6
            return self.node("HardSwish", [x], f"{name}/hard_swish")
        if act == "identity":
            return x
        raise ValueError(f"unknown activation {act!r}")

    def conv(self, x: str, c: FusedConv) -> str:
        if c.input_offset:
            offset = self.const(f"{c.name}/offset", np.array(c.input_offset, np.float32))
            x = self.node("Add", [x, offset], f"{c.name}/input_offset")
        w = self.const(f"{c.name}/weights", c.weight)
        b = self.const(f"{c.name}/biases", c.bias)
        top, left, bottom, right = c.pads
        y = self.node("Conv", [x, w, b], f"{c.name}/Conv2D", group=c.groups,
                      kernel_shape=[c.kernel, c.kernel], strides=[c.stride, c.stride],
                      pads=[top, left, bottom, right], dilations=[1, 1])
        return self.activation(y, c.act, c.name)

    def block(self, x: str, blk: FusedBlock) -> str:
        y = self.conv(x, blk.expand) if blk.expand else x
        y = self.conv(y, blk.depthwise)
        if blk.squeeze_excite:
            se = blk.squeeze_excite
            s = self.node("GlobalAveragePool", [y], f"{blk.name}/squeeze_excite/mean")
            s = self.conv(self.conv(s, se.reduce), se.expand)
            y = self.node("Mul", [y, s], f"{blk.name}/squeeze_excite/mul")
        y = self.conv(y, blk.project)
        return self.node("Add", [x, y], f"{blk.name}/add") if blk.residual else y


def to_onnx(net: FusedNet, *, nhwc: bool = False,
            metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of ``net``: input ``images`` float32 ``(batch, 3, H, W)`` in [0, 1]
    (``(batch, H, W, 3)`` with ``nhwc``), output ``features`` float32
    ``(batch, num_features)``. ``metadata`` goes into ``metadata_props``."""
    g = _GraphBuilder()
    h, w = net.image_size
    shape = ["batch", h, w, 3] if nhwc else ["batch", 3, h, w]
    x = INPUT_NAME
    if nhwc:
        x = g.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    for layer in net.layers:
        if isinstance(layer, FusedConv):
            x = g.conv(x, layer)
        elif isinstance(layer, FusedBlock):
            x = g.block(x, layer)
        elif isinstance(layer, FusedPool):
            x = g.node("GlobalAveragePool", [x], layer.name)
    g.node("Flatten", [x], OUTPUT_NAME, axis=1)
    graph = helper.make_graph(
        g.nodes, net.model,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                       ["batch", net.num_features])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mobilevec")
    model.ir_version = 8  # what opset 17 needs; readable by every runtime that reads opset 17
    helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    return model
