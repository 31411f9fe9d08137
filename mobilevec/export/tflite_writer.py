"""A :class:`~mobilevec.export.fused.FusedNet` written as a TFLite flatbuffer (float32, NHWC).

Written directly with the flatbuffers builder functions of the ``tflite`` package (no
TensorFlow, no converter). The graph uses only builtin ops that LiteRT's XNNPACK delegate
runs: ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` with TF 'SAME' padding (TFLite's own SAME rule
is TF's, so the fixed pads of the fused net need no ``PAD``), fused ReLU / ReLU6,
``HARD_SWISH``, ``MEAN`` (squeeze-excite and global pool), ``MUL``, ``ADD``, ``RESHAPE``.
The first convolution is preceded by one ``ADD`` of -0.5 (the folded input scaling, see
:mod:`mobilevec.export.fused`).

Input ``images`` float32 ``(N, H, W, 3)`` in [0, 1] (batch resizable: shape signature
``[-1, H, W, 3]``), output ``features`` float32 ``(N, D)``. The metadata block is stored as
JSON in the model metadata entry ``mobilevec``.
"""

from __future__ import annotations

import importlib
import json

import flatbuffers
import numpy as np
import tflite

from .fused import FusedBlock, FusedConv, FusedNet, FusedPool


def _builders(name: str):
    # the package re-exports each table's class under its name; the builder functions
    # (Start, Add*, End) live in the module of the same name
    return importlib.import_module(f"tflite.{name}")


(AddOptions, Buffer, Conv2DOptions, DepthwiseConv2DOptions, Metadata, Model, MulOptions,
 Operator, OperatorCode, ReducerOptions, ReshapeOptions, SubGraph, Tensor) = map(_builders, (
    "AddOptions", "Buffer", "Conv2DOptions", "DepthwiseConv2DOptions", "Metadata", "Model",
    "MulOptions", "Operator", "OperatorCode", "ReducerOptions", "ReshapeOptions", "SubGraph",
    "Tensor"))

METADATA_NAME = "mobilevec"
_OPS = tflite.BuiltinOperator
_OPTIONS = tflite.BuiltinOptions
_FUSED_ACT = {"relu": tflite.ActivationFunctionType.RELU,
              "relu6": tflite.ActivationFunctionType.RELU6}


class _Graph:
    """Tensors, operators and buffers collected before the flatbuffer is built."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty buffer TFLite expects
        self.tensors: list[dict] = []
        self.ops: list[dict] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape: list[int], data: np.ndarray | None = None,
               dtype: int = tflite.TensorType.FLOAT32) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buffer = len(self.buffers) - 1
        self.tensors.append({"name": name, "shape": shape, "buffer": buffer, "type": dtype})
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int],
           options: tuple[int, dict] | None = None) -> None:
        if code not in self.codes:
            self.codes.append(code)
        self.ops.append({"code": self.codes.index(code), "inputs": inputs,
                         "outputs": outputs, "options": options})

    def activation(self, x: int, act: str, name: str, shape: list[int]) -> tuple[int, int]:
        """(fused activation code, tensor) — hard-swish becomes its own op."""
        if act in _FUSED_ACT:
            return _FUSED_ACT[act], x
        if act == "hard_swish":
            y = self.tensor(f"{name}/hard_swish", shape)
            self.op(_OPS.HARD_SWISH, [x], [y])
            return tflite.ActivationFunctionType.NONE, y
        return tflite.ActivationFunctionType.NONE, x

    def conv(self, x: int, c: FusedConv, size: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """Convolution on ``x`` of spatial ``size``; returns its output tensor and size."""
        h, w = size
        if c.input_offset:
            offset = self.tensor(f"{c.name}/offset", [], np.array(c.input_offset, np.float32))
            channels = c.weight.shape[1] * c.groups
            shifted = self.tensor(f"{c.name}/input_offset", [-1, h, w, channels])
            self.op(_OPS.ADD, [x, offset], [shifted], (_OPTIONS.AddOptions, {}))
            x = shifted
        out = (-(-h // c.stride), -(-w // c.stride))  # TFLite's SAME is TF's: c.pads
        depthwise = c.groups > 1
        # TFLite kernels: CONV_2D OHWI, DEPTHWISE_CONV_2D 1HWC
        kernel = (c.weight.transpose(1, 2, 3, 0) if depthwise
                  else c.weight.transpose(0, 2, 3, 1))
        wt = self.tensor(f"{c.name}/weights", list(kernel.shape), kernel.astype(np.float32))
        bt = self.tensor(f"{c.name}/biases", [c.out_channels], c.bias.astype(np.float32))
        shape = [-1, *out, c.out_channels]
        y = self.tensor(f"{c.name}/Conv2D", shape)
        fused, result = _FUSED_ACT.get(c.act, tflite.ActivationFunctionType.NONE), y
        common = {"padding": tflite.Padding.SAME, "stride": c.stride, "act": fused}
        if depthwise:
            self.op(_OPS.DEPTHWISE_CONV_2D, [x, wt, bt], [y],
                    (_OPTIONS.DepthwiseConv2DOptions, common))
        else:
            self.op(_OPS.CONV_2D, [x, wt, bt], [y], (_OPTIONS.Conv2DOptions, common))
        if c.act == "hard_swish":
            _, result = self.activation(y, c.act, c.name, shape)
        return result, out

    def mean(self, x: int, name: str, channels: int) -> int:
        axes = self.tensor(f"{name}/axes", [2], np.array([1, 2], np.int32),
                           tflite.TensorType.INT32)
        y = self.tensor(name, [-1, 1, 1, channels])
        self.op(_OPS.MEAN, [x, axes], [y], (_OPTIONS.ReducerOptions, {"keep_dims": True}))
        return y

    def block(self, x: int, blk: FusedBlock, size: tuple[int, int]
              ) -> tuple[int, tuple[int, int]]:
        y, out = (self.conv(x, blk.expand, size) if blk.expand else (x, size))
        y, out = self.conv(y, blk.depthwise, out)
        if blk.squeeze_excite:
            se, channels = blk.squeeze_excite, blk.depthwise.out_channels
            s = self.mean(y, f"{blk.name}/squeeze_excite/mean", channels)
            s, _ = self.conv(s, se.reduce, (1, 1))
            s, _ = self.conv(s, se.expand, (1, 1))
            gated = self.tensor(f"{blk.name}/squeeze_excite/mul", [-1, *out, channels])
            self.op(_OPS.MUL, [y, s], [gated], (_OPTIONS.MulOptions, {}))
            y = gated
        y, out = self.conv(y, blk.project, out)
        if blk.residual:
            z = self.tensor(f"{blk.name}/add", [-1, *out, blk.project.out_channels])
            self.op(_OPS.ADD, [x, y], [z], (_OPTIONS.AddOptions, {}))
            y = z
        return y, out


def _vector(b: flatbuffers.Builder, start, items: list[int], prepend) -> int:
    start(b, len(items))
    for item in reversed(items):
        prepend(item)
    return b.EndVector()


def _int_vector(b: flatbuffers.Builder, start, values: list[int]) -> int:
    return _vector(b, start, values, b.PrependInt32)


def _data(b: flatbuffers.Builder, data: bytes) -> int:
    """A uint8 vector aligned to 16 bytes (LiteRT maps weights in place)."""
    b.StartVector(1, len(data), 16)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _options(b: flatbuffers.Builder, kind: int, o: dict) -> int:
    if kind == _OPTIONS.Conv2DOptions:
        Conv2DOptions.Start(b)
        Conv2DOptions.AddPadding(b, o["padding"])
        Conv2DOptions.AddStrideW(b, o["stride"])
        Conv2DOptions.AddStrideH(b, o["stride"])
        Conv2DOptions.AddFusedActivationFunction(b, o["act"])
        Conv2DOptions.AddDilationWFactor(b, 1)
        Conv2DOptions.AddDilationHFactor(b, 1)
        return Conv2DOptions.End(b)
    if kind == _OPTIONS.DepthwiseConv2DOptions:
        DepthwiseConv2DOptions.Start(b)
        DepthwiseConv2DOptions.AddPadding(b, o["padding"])
        DepthwiseConv2DOptions.AddStrideW(b, o["stride"])
        DepthwiseConv2DOptions.AddStrideH(b, o["stride"])
        DepthwiseConv2DOptions.AddDepthMultiplier(b, 1)
        DepthwiseConv2DOptions.AddFusedActivationFunction(b, o["act"])
        DepthwiseConv2DOptions.AddDilationWFactor(b, 1)
        DepthwiseConv2DOptions.AddDilationHFactor(b, 1)
        return DepthwiseConv2DOptions.End(b)
    if kind == _OPTIONS.ReducerOptions:
        ReducerOptions.Start(b)
        ReducerOptions.AddKeepDims(b, o["keep_dims"])
        return ReducerOptions.End(b)
    if kind == _OPTIONS.ReshapeOptions:
        shape = _int_vector(b, ReshapeOptions.StartNewShapeVector, o["new_shape"])
        ReshapeOptions.Start(b)
        ReshapeOptions.AddNewShape(b, shape)
        return ReshapeOptions.End(b)
    module = {_OPTIONS.AddOptions: AddOptions, _OPTIONS.MulOptions: MulOptions}[kind]
    module.Start(b)
    return module.End(b)


def _serialize(g: _Graph, inputs: list[int], outputs: list[int], name: str,
               metadata: dict[str, str]) -> bytes:
    b = flatbuffers.Builder(1 << 20)
    g.buffers.append(json.dumps(metadata, sort_keys=True).encode())
    meta_buffer = len(g.buffers) - 1
    buffers = []
    for data in g.buffers:
        vec = _data(b, data) if data else None
        Buffer.Start(b)
        if vec is not None:
            Buffer.AddData(b, vec)
        buffers.append(Buffer.End(b))
    tensors = []
    for t in g.tensors:
        tname = b.CreateString(t["name"])
        shape = _int_vector(b, Tensor.StartShapeVector, [abs(d) for d in t["shape"]])
        signature = _int_vector(b, Tensor.StartShapeSignatureVector, t["shape"])
        Tensor.Start(b)
        Tensor.AddShape(b, shape)
        Tensor.AddShapeSignature(b, signature)
        Tensor.AddType(b, t["type"])
        Tensor.AddBuffer(b, t["buffer"])
        Tensor.AddName(b, tname)
        tensors.append(Tensor.End(b))
    ops = []
    for op in g.ops:
        ins = _int_vector(b, Operator.StartInputsVector, op["inputs"])
        outs = _int_vector(b, Operator.StartOutputsVector, op["outputs"])
        opts = _options(b, *op["options"]) if op["options"] else None
        Operator.Start(b)
        Operator.AddOpcodeIndex(b, op["code"])
        Operator.AddInputs(b, ins)
        Operator.AddOutputs(b, outs)
        if opts is not None:
            Operator.AddBuiltinOptionsType(b, op["options"][0])
            Operator.AddBuiltinOptions(b, opts)
        ops.append(Operator.End(b))
    codes = []
    for code in g.codes:
        OperatorCode.Start(b)
        OperatorCode.AddDeprecatedBuiltinCode(b, min(code, 127))
        OperatorCode.AddBuiltinCode(b, code)
        OperatorCode.AddVersion(b, 1)
        codes.append(OperatorCode.End(b))
    sub_name = b.CreateString(name)
    t_vec = _vector(b, SubGraph.StartTensorsVector, tensors, b.PrependUOffsetTRelative)
    o_vec = _vector(b, SubGraph.StartOperatorsVector, ops, b.PrependUOffsetTRelative)
    in_vec = _int_vector(b, SubGraph.StartInputsVector, inputs)
    out_vec = _int_vector(b, SubGraph.StartOutputsVector, outputs)
    SubGraph.Start(b)
    SubGraph.AddTensors(b, t_vec)
    SubGraph.AddInputs(b, in_vec)
    SubGraph.AddOutputs(b, out_vec)
    SubGraph.AddOperators(b, o_vec)
    SubGraph.AddName(b, sub_name)
    subgraph = SubGraph.End(b)
    meta_name = b.CreateString(METADATA_NAME)
    Metadata.Start(b)
    Metadata.AddName(b, meta_name)
    Metadata.AddBuffer(b, meta_buffer)
    meta = Metadata.End(b)
    description = b.CreateString("mobilevec export")
    codes_vec = _vector(b, Model.StartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
    subs_vec = _vector(b, Model.StartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    bufs_vec = _vector(b, Model.StartBuffersVector, buffers, b.PrependUOffsetTRelative)
    meta_vec = _vector(b, Model.StartMetadataVector, [meta], b.PrependUOffsetTRelative)
    Model.Start(b)
    Model.AddVersion(b, 3)
    Model.AddOperatorCodes(b, codes_vec)
    Model.AddSubgraphs(b, subs_vec)
    Model.AddDescription(b, description)
    Model.AddBuffers(b, bufs_vec)
    Model.AddMetadata(b, meta_vec)
    b.Finish(Model.End(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def to_tflite(net: FusedNet, metadata: dict[str, str] | None = None) -> bytes:
    """The TFLite flatbuffer of ``net`` (see the module docstring for its contract)."""
    g = _Graph()
    h, w = net.image_size
    x = g.tensor("images", [-1, h, w, 3])
    size = (h, w)
    channels = 3
    for layer in net.layers:
        if isinstance(layer, FusedConv):
            x, size = g.conv(x, layer, size)
            channels = layer.out_channels
        elif isinstance(layer, FusedBlock):
            x, size = g.block(x, layer, size)
            channels = layer.project.out_channels
        elif isinstance(layer, FusedPool):
            x, size = g.mean(x, layer.name, channels), (1, 1)
    shape = g.tensor("features/shape", [2], np.array([-1, net.num_features], np.int32),
                     tflite.TensorType.INT32)
    out = g.tensor("features", [-1, net.num_features])
    g.op(_OPS.RESHAPE, [x, shape], [out],
         (_OPTIONS.ReshapeOptions, {"new_shape": [-1, net.num_features]}))
    return _serialize(g, [0], [out], net.model, dict(metadata or {}))
