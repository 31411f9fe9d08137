"""A small TFLite flatbuffer writer (the PyPI ``flatbuffers`` + ``tflite`` bindings), for
tests and fuzz seeds: one V3 block, valid for the LiteRT interpreter.

Used by tests/test_tflite_reader.py and fuzz/seeds.py. ``build_tflite`` serialises
tensors and ops as the converter lays them out; ``synthetic_block`` is one MobileNet V3
block (fp16 depthwise kernel behind DEQUANTIZE, squeeze-excite with an unfolded gate).
"""

from __future__ import annotations

import numpy as np

NET = "MobilenetV3"
FLOAT32, FLOAT16, INT32 = 0, 1, 2
ADD, CONV, DW, DEQUANTIZE, MUL, RELU6, MEAN = 0, 3, 4, 6, 18, 21, 40
NONE_ACT, RELU_ACT, RELU6_ACT = 0, 1, 3


def _fb(module: str):
    import importlib

    return importlib.import_module(f"tflite.{module}")


def _options(builder, kind: str, act: int = NONE_ACT, multiplier: int = 1) -> tuple[int, int]:
    """(union type, table offset) of the options of one op."""
    if kind == "conv":
        m = _fb("Conv2DOptions")
        m.Start(builder), m.AddStrideW(builder, 1), m.AddStrideH(builder, 1)
        m.AddFusedActivationFunction(builder, act)
        return 1, m.End(builder)
    if kind == "dw":
        m = _fb("DepthwiseConv2DOptions")
        m.Start(builder), m.AddStrideW(builder, 1), m.AddStrideH(builder, 1)
        m.AddDepthMultiplier(builder, multiplier), m.AddFusedActivationFunction(builder, act)
        return 2, m.End(builder)
    if kind in ("add", "mul"):
        m = _fb("AddOptions" if kind == "add" else "MulOptions")
        m.Start(builder), m.AddFusedActivationFunction(builder, act)
        return (11 if kind == "add" else 21), m.End(builder)
    if kind == "mean":
        m = _fb("ReducerOptions")
        m.Start(builder), m.AddKeepDims(builder, True)
        return 27, m.End(builder)
    return 0, 0


def _offsets_vector(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _aligned_bytes(builder, data: bytes) -> int:
    builder.StartVector(1, len(data), 16)  # schema: force_align 16
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def build_tflite(tensors: list[tuple], ops: list[tuple], inputs: list[int], outputs: list[int]):
    """Serialise ``tensors`` [(name, shape, type, array or None)] and ``ops``
    [(builtin code, inputs, outputs, options kind, activation, depth multiplier)]."""
    import flatbuffers

    builder = flatbuffers.Builder(4096)
    buffers, tensor_offsets, tensor_buffer = [], [], []
    for data in [None] + [t[3] for t in tensors if t[3] is not None]:
        payload = None if data is None else _aligned_bytes(builder, data.tobytes())
        m = _fb("Buffer")
        m.Start(builder)
        if payload is not None:
            m.AddData(builder, payload)
        buffers.append(m.End(builder))
    next_buffer = 1
    for *_, data in tensors:
        tensor_buffer.append(next_buffer if data is not None else 0)
        next_buffer += data is not None
    for (name, shape, dtype, _), buf in zip(tensors, tensor_buffer, strict=True):
        name_off = builder.CreateString(name)
        shape_off = builder.CreateNumpyVector(np.array(shape, np.int32))
        m = _fb("Tensor")
        m.Start(builder), m.AddShape(builder, shape_off), m.AddType(builder, dtype)
        m.AddBuffer(builder, buf), m.AddName(builder, name_off)
        tensor_offsets.append(m.End(builder))
    codes = sorted({op[0] for op in ops})
    op_offsets = []
    for code, ins, outs, kind, act, multiplier in ops:
        options_type, options = _options(builder, kind, act, multiplier)
        ins_off = builder.CreateNumpyVector(np.array(ins, np.int32))
        outs_off = builder.CreateNumpyVector(np.array(outs, np.int32))
        m = _fb("Operator")
        m.Start(builder), m.AddOpcodeIndex(builder, codes.index(code))
        m.AddInputs(builder, ins_off), m.AddOutputs(builder, outs_off)
        if options_type:
            m.AddBuiltinOptionsType(builder, options_type), m.AddBuiltinOptions(builder, options)
        op_offsets.append(m.End(builder))
    code_offsets = []
    for code in codes:
        m = _fb("OperatorCode")
        m.Start(builder), m.AddDeprecatedBuiltinCode(builder, code)
        m.AddBuiltinCode(builder, code), m.AddVersion(builder, 1)
        code_offsets.append(m.End(builder))
    vectors = [_offsets_vector(builder, v) for v in (tensor_offsets, op_offsets, code_offsets,
                                                     buffers)]
    ins_off = builder.CreateNumpyVector(np.array(inputs, np.int32))
    outs_off = builder.CreateNumpyVector(np.array(outputs, np.int32))
    m = _fb("SubGraph")
    m.Start(builder), m.AddTensors(builder, vectors[0]), m.AddInputs(builder, ins_off)
    m.AddOutputs(builder, outs_off), m.AddOperators(builder, vectors[1])
    subgraph = m.End(builder)
    subgraphs = _offsets_vector(builder, [subgraph])
    m = _fb("Model")
    m.Start(builder), m.AddVersion(builder, 3), m.AddOperatorCodes(builder, vectors[2])
    m.AddSubgraphs(builder, subgraphs), m.AddBuffers(builder, vectors[3])
    builder.Finish(m.End(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def synthetic_block(gate_offset: float, fused_relu6: bool) -> tuple[bytes, dict]:
    """One V3 block (dw x2 multiplier, SE with an unfolded gate, project) on 8x8x4."""
    rng = np.random.default_rng(7)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    s = f"{NET}/expanded_conv"
    values = {
        "dw": rng.standard_normal((1, 3, 3, 8)).astype(np.float16), "dw_b": f32(8),
        "se": f32(2, 1, 1, 8), "se_b": f32(2), "se1": f32(8, 1, 1, 2), "se1_b": f32(8),
        "proj": f32(6, 1, 1, 8), "proj_b": f32(6),
    }
    tensors = [
        ("serving_default_inputs:0", (1, 8, 8, 4), FLOAT32, None),  # 0
        (f"{s}/depthwise/depthwise_weights", (1, 3, 3, 8), FLOAT16, values["dw"]),  # 1
        (f"{s}/depthwise/depthwise_weights/dequantize", (1, 3, 3, 8), FLOAT32, None),  # 2
        (f"{s}/depthwise/depthwise_bias", (8,), FLOAT32, values["dw_b"]),  # 3
        (f"{s}/depthwise/Relu", (1, 8, 8, 8), FLOAT32, None),  # 4
        (f"{s}/squeeze_excite/Mean/reduction_indices", (2,), INT32,
         np.array([1, 2], np.int32)),  # 5
        (f"{s}/squeeze_excite/Mean", (1, 1, 1, 8), FLOAT32, None),  # 6
        (f"{s}/squeeze_excite/Conv/weights", (2, 1, 1, 8), FLOAT32, values["se"]),  # 7
        (f"{s}/squeeze_excite/Conv/biases", (2,), FLOAT32, values["se_b"]),  # 8
        (f"{s}/squeeze_excite/Conv/Relu", (1, 1, 1, 2), FLOAT32, None),  # 9
        (f"{s}/squeeze_excite/Conv_1/weights", (8, 1, 1, 2), FLOAT32, values["se1"]),  # 10
        (f"{s}/squeeze_excite/Conv_1/biases", (8,), FLOAT32, values["se1_b"]),  # 11
        (f"{s}/squeeze_excite/Conv_1/BiasAdd", (1, 1, 1, 8), FLOAT32, None),  # 12
        (f"{s}/squeeze_excite/Conv_1/add/y", (), FLOAT32, np.float32([gate_offset])),  # 13
        (f"{s}/squeeze_excite/Conv_1/add", (1, 1, 1, 8), FLOAT32, None),  # 14
        (f"{s}/squeeze_excite/Conv_1/mul/y", (), FLOAT32, np.float32([0.16667])),  # 15
        (f"{s}/squeeze_excite/Conv_1/mul", (1, 1, 1, 8), FLOAT32, None),  # 16
        (f"{s}/squeeze_excite/mul", (1, 8, 8, 8), FLOAT32, None),  # 17
        (f"{s}/project/weights", (6, 1, 1, 8), FLOAT32, values["proj"]),  # 18
        (f"{s}/project/Conv2D_bias", (6,), FLOAT32, values["proj_b"]),  # 19
        (f"{s}/project/Conv2D", (1, 8, 8, 6), FLOAT32, None),  # 20
        (f"{s}/squeeze_excite/Conv_1/Relu6", (1, 1, 1, 8), FLOAT32, None),  # 21
    ]
    gate_in = 14 if fused_relu6 else 21
    ops = [
        (DEQUANTIZE, [1], [2], None, 0, 1),
        (DW, [0, 2, 3], [4], "dw", RELU_ACT, 2),
        (MEAN, [4, 5], [6], "mean", 0, 1),
        (CONV, [6, 7, 8], [9], "conv", RELU_ACT, 1),
        (CONV, [9, 10, 11], [12], "conv", NONE_ACT, 1),
        (ADD, [12, 13], [14], "add", RELU6_ACT if fused_relu6 else NONE_ACT, 1),
        *([] if fused_relu6 else [(RELU6, [14], [21], None, 0, 1)]),
        (MUL, [gate_in, 15], [16], "mul", NONE_ACT, 1),
        (MUL, [4, 16], [17], "mul", NONE_ACT, 1),
        (CONV, [17, 18, 19], [20], "conv", NONE_ACT, 1),
    ]
    return build_tflite(tensors, ops, [0], [20]), values
