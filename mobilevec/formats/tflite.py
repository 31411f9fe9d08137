"""Read TF-Slim MobileNet V2/V3 weights out of a float TFLite file, without TensorFlow.

Public API: :func:`read_tflite`, :func:`inspect_tflite` (-> :class:`TfliteInfo`),
:func:`is_tflite`.

The FlatBuffers decoding is done here by hand, following the TFLite schema
(``tensorflow/lite/schema/schema.fbs``, schema version 3, identifier ``TFL3``). Every
offset, vector length and string is bounds-checked against the file, so a truncated or
corrupt file raises :class:`~mobilevec.errors.WeightsError` naming the file, never an
``IndexError`` or ``struct.error``. Constant buffers are read from their inline ``data``
vector or, for files that keep them outside the flatbuffer (``Buffer.offset``/``size``,
offsets counted from the start of the file), from that region.

How weights are found
    The operator graph of subgraph 0 is walked. Every ``CONV_2D`` and
    ``DEPTHWISE_CONV_2D`` contributes its kernel and bias. Its TF-Slim scope
    (``MobilenetV3/expanded_conv_3/depthwise``) is recovered from the names of the op's
    kernel, bias and output tensors. The converter joins the names of all TF ops it fused
    into one tensor with ``;`` and those lists often mention *other* layers too (for
    example the kernel of ``expanded_conv_1/depthwise`` also names
    ``expanded_conv_10/project/Conv2D``), so each of the three tensors votes once for
    every layer scope it names and once more for the first one it names (the converter
    lists the op's own location first). Only scopes that fit the op kind count
    (depthwise scopes for depthwise ops, the others for convs); the most votes wins. A
    tie, or one scope claimed by two ops, raises ``WeightsError``.

Layouts (TFLite -> TF-Slim)
    * ``CONV_2D`` kernels are ``[out, kh, kw, in]``; returned as HWIO ``[kh, kw, in, out]``.
    * ``DEPTHWISE_CONV_2D`` kernels are ``[1, kh, kw, C * M]`` with the multiplier index
      varying fastest; returned as ``[kh, kw, C, M]`` (a pure reshape).

BatchNorm folded by the converter
    The TFLite converter folds each BatchNorm into the conv kernel and bias. The kernel
    is returned as the Slim ``weights`` and the folded bias is expressed as an *exact
    identity* BatchNorm carrying it::

        gamma = 1, beta = folded bias, moving_mean = 0, moving_variance = 1 - 1e-3

    With TF-Slim's epsilon 1e-3, ``float32(1 - 1e-3) + float32(1e-3) == 1.0`` exactly, so
    ``gamma * (x - mean) / sqrt(var + eps) + beta`` is exactly ``x + beta`` in float32.
    Whether a conv had a BatchNorm is read from the tensor names (``<scope>/BatchNorm``
    versus ``<scope>/biases`` / ``BiasAdd``); if the names say neither, the TF-Slim rule
    decides: only squeeze-excite convs, ``Conv_2`` and ``Logits/Conv2d_1c_1x1`` have
    biases, every other conv has a BatchNorm.

Squeeze-excite gate
    TF-Slim's gate is ``relu6(x + 3) * 0.16667`` after ``squeeze_excite/Conv_1``. The
    converter folds the ``+ 3`` into that conv's bias (stored bias = b + 3), fuses the
    relu6 into the conv and keeps the multiply as ``MUL`` by a scalar constant. This
    reader recognises that pattern (fused RELU6, a folded ``<scope>/add`` in the tensor
    names, then ``MUL`` by a scalar close to 1/6, then the excite ``MUL``) and returns
    ``b = stored - 3``. The 3 itself is not stored in such a file; it is the offset of
    the hard sigmoid that the pattern identifies. The unfolded form (``ADD`` of a scalar
    constant, relu6, ``MUL``) is recognised too; its bias is returned unchanged and the
    offset read from the file. Any other shape of gate raises ``WeightsError``.

Only float32 weights are supported (float16 constants behind ``DEQUANTIZE`` are widened
exactly to float32); integer-quantized kernels raise ``WeightsError``.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilevec.errors import WeightsError
from mobilevec.formats import _limits

__all__ = ["ConvInfo", "TfliteInfo", "inspect_tflite", "is_tflite", "read_tflite"]

log = logging.getLogger(__name__)

_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3

# TF-Slim BatchNorm epsilon (never overridden in the MobileNet definitions).
_SLIM_BN_EPSILON = np.float32(1e-3)
# moving_variance of the identity BatchNorm: var + eps == 1.0 exactly in float32.
_IDENTITY_VARIANCE = np.float32(1.0) - _SLIM_BN_EPSILON
# Offset of TF-Slim's hard sigmoid relu6(x + 3) * 0.16667 (conv_blocks / mobilenet_v3).
_HARD_SIGMOID_OFFSET = 3.0
# How far the gate multiplier may sit from 1/6 (Slim writes 0.16667, not 1/6).
_GATE_MULTIPLIER_TOLERANCE = 1e-3

# BuiltinOperator codes used here (schema.fbs enum BuiltinOperator).
_ADD, _AVERAGE_POOL_2D, _CONV_2D, _DEPTHWISE_CONV_2D, _DEQUANTIZE = 0, 1, 3, 4, 6
_MUL, _RELU6, _SUB, _CUSTOM = 18, 21, 41, 32
_OP_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC",
    17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE", 25: "SOFTMAX",
    32: "CUSTOM", 34: "PAD", 40: "MEAN", 41: "SUB", 42: "DIV", 43: "SQUEEZE",
    114: "QUANTIZE", 117: "HARD_SWISH",
}
# BuiltinOptions union members (1-based position in the union).
_CONV_OPTIONS, _DEPTHWISE_OPTIONS, _ADD_OPTIONS = 1, 2, 11
# ActivationFunctionType and Padding enums.
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_PADDINGS = {0: "SAME", 1: "VALID"}
# TensorType -> (numpy little-endian dtype, name).
_DTYPES = {
    0: ("<f4", "float32"), 1: ("<f2", "float16"), 2: ("<i4", "int32"), 3: ("u1", "uint8"),
    4: ("<i8", "int64"), 6: ("?", "bool"), 7: ("<i2", "int16"), 9: ("i1", "int8"),
    10: ("<f8", "float64"),
}
_FLOAT32, _FLOAT16 = 0, 1

# A TF-Slim MobileNet layer scope inside one ';'-separated piece of a tensor name. DOTALL
# and \Z: the rest runs to the very end, so a failed attempt never rescans it (with "."
# stopping at a newline and "$", each '/' would rescan the rest: quadratic time).
_SCOPE_RE = re.compile(
    r"(?:^|/)(?P<scope>Mobilenet[A-Za-z0-9]*/"
    r"(?:expanded_conv(?:_\d+)?/(?:expand|depthwise|project|squeeze_excite/Conv(?:_1)?)"
    r"|Conv(?:_\d+)?|Logits/Conv2d_1c_1x1))(?:/(?P<rest>.*))?\Z",
    re.DOTALL,
)
# Converter-fused names join the names of every TF op folded into a tensor (443 bytes at
# most in the V3 embedder); longer ones are refused.
_MAX_TENSOR_NAME = 16 * _limits.MAX_NAME_BYTES
# Layers that TF-Slim builds with a bias and no BatchNorm.
_BIASED_LAYER_RE = re.compile(r"/(?:squeeze_excite/Conv(?:_1)?|Conv_2|Logits/Conv2d_1c_1x1)$")


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class ConvInfo:
    """One convolution of the file, in execution order.

    ``kernel_shape`` is in TF layout (HWIO, or ``[k, k, C, M]`` for depthwise).
    ``stride`` and ``dilation`` are ``(h, w)``. ``activation`` is the fused activation
    (``"NONE"``, ``"RELU"``, ``"RELU6"``...); ``followed_by`` is the builtin name of the
    single op that consumes the output (``"HARD_SWISH"``, ``"MUL"``...), or None when the
    output has several or no consumers. ``kernel_tensor`` / ``bias_tensor`` are tensor
    indices in subgraph 0 (``bias_tensor`` None when the op has no bias input).
    """

    op_index: int
    op: str
    scope: str
    kernel_shape: tuple[int, ...]
    stride: tuple[int, int]
    padding: str
    activation: str
    followed_by: str | None
    dilation: tuple[int, int]
    batchnorm_folded: bool
    kernel_tensor: int
    bias_tensor: int | None


@dataclass(frozen=True)
class TfliteInfo:
    """What a TFLite file declares, for checking it against an architecture spec.

    ``input_scale`` / ``input_offset``: the graph starts with ``x * input_scale -
    input_offset`` (TF Hub's ``hub_input``: 2.0 and 1.0); both None when the input does
    not start with a scalar MUL followed by a scalar SUB/ADD. ``se_gate_multiplier`` is
    the scalar of the squeeze-excite gate MUL as stored (TF-Slim: 0.16667),
    ``se_gate_offset`` the hard-sigmoid offset (3.0), ``se_bias_folded`` whether the file
    had that offset folded into the ``squeeze_excite/Conv_1`` biases (undone by
    :func:`read_tflite`); all None/False without squeeze-excite. ``operators`` lists the
    builtin op names in execution order. ``unused_constants`` names float constants with
    two or more elements that no conv consumed (empty for a clean MobileNet file).
    """

    path: str
    version: int
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_name: str
    output_shape: tuple[int, ...]
    output_dtype: str
    input_scale: float | None
    input_offset: float | None
    se_gate_multiplier: float | None
    se_gate_offset: float | None
    se_bias_folded: bool
    convs: tuple[ConvInfo, ...]
    operators: tuple[str, ...]
    unused_constants: tuple[str, ...]


# ------------------------------------------------------------------- flatbuffer decoding


class _Flat:
    """Bounds-checked little-endian reads from the bytes of one file."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.path = path
        # Flatbuffer offsets may alias: a thousand tables can point at one long vector. What
        # is decoded (names, index vectors, constants) is counted against a budget of four
        # times the file (a clean file decodes about its own size once), so aliasing can
        # cost neither memory nor time beyond that.
        self.budget = 4 * len(data) + (1 << 20)

    def spend(self, size: int, what: str) -> None:
        self.budget -= size
        if self.budget < 0:
            raise self.fail(f"corrupt TFLite file: decoding {what} would read more than four "
                            "times the file (aliased vectors?)")

    def fail(self, message: str, variable: str | None = None) -> WeightsError:
        return WeightsError(self.path, message, variable)

    def need(self, pos: int, size: int, what: str, variable: str | None = None) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.data):
            raise self.fail(
                f"corrupt or truncated TFLite file: {what} at byte {pos} (+{size} bytes) "
                f"lies outside the {len(self.data)}-byte file; re-download it", variable
            )

    def unpack(self, fmt: str, pos: int, what: str):
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, pos)[0]

    def follow(self, pos: int, what: str) -> int:
        """Absolute position that the uoffset stored at ``pos`` points to."""
        return pos + self.unpack("<I", pos, what)

    def vector(self, pos: int, elem_size: int, what: str,
               variable: str | None = None) -> tuple[int, int]:
        """(first element position, length) of the vector whose uoffset is at ``pos``."""
        start = pos + self.unpack("<I", pos, what)
        self.need(start, 4, f"{what} length", variable)
        count = self.unpack("<I", start, f"{what} length")
        self.need(start + 4, count * elem_size, what, variable)
        return start + 4, count


class _Table:
    """A FlatBuffers table: vtable lookup of fields by slot number (schema order)."""

    def __init__(self, flat: _Flat, pos: int, what: str):
        self.flat, self.pos, self.what = flat, pos, what
        self.vtable = pos - flat.unpack("<i", pos, f"{what} vtable offset")
        self.vtable_size = flat.unpack("<H", self.vtable, f"{what} vtable")
        if self.vtable_size < 4 or self.vtable_size % 2:
            raise flat.fail(f"corrupt TFLite file: bad vtable size {self.vtable_size} of {what}")
        flat.need(self.vtable, self.vtable_size, f"{what} vtable")

    def _field(self, slot: int) -> int:
        entry = 4 + 2 * slot
        if entry >= self.vtable_size:
            return 0  # field absent: written by an older schema, or default value
        offset = self.flat.unpack("<H", self.vtable + entry, f"{self.what} vtable")
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: str, default: int | float = 0):
        pos = self._field(slot)
        return self.flat.unpack(fmt, pos, f"{self.what} field {slot}") if pos else default

    def table(self, slot: int, what: str) -> _Table | None:
        pos = self._field(slot)
        return _Table(self.flat, self.flat.follow(pos, what), what) if pos else None

    def vector(self, slot: int, elem_size: int, what: str,
               variable: str | None = None) -> tuple[int, int]:
        pos = self._field(slot)
        return self.flat.vector(pos, elem_size, what, variable) if pos else (0, 0)

    def tables(self, slot: int, what: str, limit: int | None = None) -> list[_Table]:
        """The tables of a vector (its first ``limit`` when given)."""
        start, count = self.vector(slot, 4, what)
        if limit is None:
            _limits.check_count(self.flat.path, count, what)
        else:
            count = min(count, limit)
        self.flat.spend(64 * count, what)
        return [
            _Table(self.flat, self.flat.follow(start + 4 * i, what), f"{what}[{i}]")
            for i in range(count)
        ]

    def ints(self, slot: int, what: str) -> tuple[int, ...]:
        start, count = self.vector(slot, 4, what)
        self.flat.spend(4 * count, what)
        return struct.unpack_from(f"<{count}i", self.flat.data, start) if count else ()

    def string(self, slot: int, what: str) -> str:
        start, count = self.vector(slot, 1, what)
        if count > _MAX_TENSOR_NAME:
            raise self.flat.fail(f"corrupt TFLite file: {what} of {count} bytes (at most "
                                 f"{_MAX_TENSOR_NAME})")
        self.flat.spend(count, what)
        return bytes(self.flat.data[start : start + count]).decode("utf-8", "replace")


# -------------------------------------------------------------------------- parsed model


@dataclass(frozen=True)
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: int
    buffer: int


@dataclass(frozen=True)
class _Op:
    index: int
    code: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: int
    options: _Table | None


@dataclass
class _Model:
    flat: _Flat
    version: int
    tensors: list[_Tensor]
    ops: list[_Op]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    buffers: list[_Table]
    producers: dict[int, _Op]
    consumers: dict[int, list[_Op]]


def _load_bytes(path: Path) -> bytes:
    if path.exists() and not path.is_file():
        raise WeightsError(path, "not a regular file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(path, "TFLite file not found") from None
    except OSError as exc:
        raise WeightsError(path, f"cannot read TFLite file: {exc}") from exc


def _check_identifier(flat: _Flat) -> None:
    if len(flat.data) < 8:
        raise flat.fail(f"not a TFLite file: only {len(flat.data)} bytes")
    found = bytes(flat.data[4:8])
    if found != _IDENTIFIER:
        raise flat.fail(f"not a TFLite flatbuffer: identifier {found!r}, expected {_IDENTIFIER!r}")


def _opcode(table: _Table) -> tuple[int, str]:
    """(builtin code, display name) of an OperatorCode table."""
    deprecated = table.scalar(0, "<b", 0)
    extended = table.scalar(3, "<i", 0)
    # The int32 field supersedes the byte one; files from older converters fill only
    # the byte (and the int32 reads 0), newer ones both, codes >= 127 only the int32.
    code = max(deprecated, extended)
    if code == _CUSTOM:
        return code, f"CUSTOM:{table.string(1, 'custom_code')}"
    return code, _OP_NAMES.get(code, f"BUILTIN_{code}")


def _parse_tensor(table: _Table, index: int) -> _Tensor:
    name = table.string(3, f"tensor {index} name")
    shape = tuple(table.ints(0, f"tensor {index} shape"))
    if len(shape) > _limits.MAX_RANK:
        raise table.flat.fail(f"corrupt TFLite file: shape of rank {len(shape)} (at most "
                              f"{_limits.MAX_RANK})", name)
    return _Tensor(
        index=index,
        name=name,
        shape=shape,
        dtype=table.scalar(1, "<b", 0),
        buffer=table.scalar(2, "<I", 0),
    )


def _parse_op(table: _Table, index: int, codes: list[tuple[int, str]], n_tensors: int) -> _Op:
    flat = table.flat
    opcode_index = table.scalar(0, "<I", 0)
    if opcode_index >= len(codes):
        raise flat.fail(f"corrupt TFLite file: operator {index} uses opcode {opcode_index}, "
                        f"only {len(codes)} exist")
    inputs = tuple(table.ints(1, f"operator {index} inputs"))
    outputs = tuple(table.ints(2, f"operator {index} outputs"))
    for t in inputs + outputs:
        if not -1 <= t < n_tensors:
            raise flat.fail(f"corrupt TFLite file: operator {index} refers to tensor {t}, "
                            f"only {n_tensors} exist")
    if not outputs or outputs[0] < 0:
        raise flat.fail(f"corrupt TFLite file: operator {index} has no output")
    # builtin_options is a union: slot 3 holds its type, slot 4 the table.
    options_type = table.scalar(3, "<B", 0)
    options = table.table(4, f"operator {index} options") if options_type else None
    code, name = codes[opcode_index]
    return _Op(index, code, name, inputs, outputs, options_type, options)


def _parse(path: Path) -> _Model:
    flat = _Flat(_load_bytes(path), str(path))
    _check_identifier(flat)
    root = _Table(flat, flat.follow(0, "root table offset"), "Model")
    version = root.scalar(0, "<I", 0)
    if version != _SCHEMA_VERSION:
        raise flat.fail(f"unsupported TFLite schema version {version} (expected 3)")
    codes = [_opcode(t) for t in root.tables(1, "operator_codes")]
    subgraphs = root.tables(2, "subgraphs", limit=1)  # only the main graph is read
    if not subgraphs:
        raise flat.fail("TFLite file has no subgraph")
    main = subgraphs[0]
    tensors = [_parse_tensor(t, i) for i, t in enumerate(main.tables(0, "tensors"))]
    ops = [_parse_op(t, i, codes, len(tensors)) for i, t in enumerate(main.tables(3, "operators"))]
    buffers = root.tables(4, "buffers")
    inputs = tuple(main.ints(1, "subgraph inputs"))
    outputs = tuple(main.ints(2, "subgraph outputs"))
    for t in inputs + outputs:
        if not 0 <= t < len(tensors):
            raise flat.fail(f"corrupt TFLite file: subgraph input/output tensor {t} does not "
                            f"exist ({len(tensors)} tensors)")
    for t in tensors:
        if t.buffer >= len(buffers):
            raise flat.fail(f"corrupt TFLite file: tensor {t.index} refers to buffer {t.buffer}, "
                            f"only {len(buffers)} exist", t.name)
    producers: dict[int, _Op] = {}
    consumers: dict[int, list[_Op]] = {}
    for op in ops:
        for t in op.outputs:
            producers[t] = op
        for t in set(op.inputs) - {-1}:
            consumers.setdefault(t, []).append(op)
    return _Model(flat, version, tensors, ops, inputs, outputs, buffers, producers, consumers)


# ----------------------------------------------------------------------------- constants


def _buffer_bytes(model: _Model, tensor: _Tensor) -> memoryview:
    """Raw bytes of a tensor's buffer (empty for activations)."""
    flat, buf = model.flat, model.buffers[tensor.buffer]
    offset = buf.scalar(1, "<Q", 0)
    if offset > 1:  # stored outside the flatbuffer; offset counted from file start
        size = buf.scalar(2, "<Q", 0)
        flat.need(offset, size, f"external buffer {tensor.buffer}", tensor.name)
        return memoryview(flat.data)[offset : offset + size]
    start, count = buf.vector(0, 1, f"data of buffer {tensor.buffer}", tensor.name)
    return memoryview(flat.data)[start : start + count]


def _tensor_array(model: _Model, tensor: _Tensor) -> np.ndarray | None:
    """The constant value of ``tensor`` as a native-endian copy, or None if it has none."""
    raw = _buffer_bytes(model, tensor)
    if not raw.nbytes:
        return None
    if tensor.dtype not in _DTYPES:
        raise model.flat.fail(f"unsupported tensor type {tensor.dtype}", tensor.name)
    dtype = np.dtype(_DTYPES[tensor.dtype][0])
    if any(d < 0 for d in tensor.shape):
        raise model.flat.fail(f"constant of shape {list(tensor.shape)}: negative dimension; "
                              "the file is corrupt", tensor.name)
    expected = math.prod(tensor.shape) * dtype.itemsize
    if raw.nbytes != expected:
        raise model.flat.fail(
            f"constant of shape {list(tensor.shape)} needs {expected} bytes, buffer holds "
            f"{raw.nbytes}; the file is corrupt", tensor.name)
    widening = 2 if tensor.dtype == _FLOAT16 else 1  # float16 is returned as float32
    model.flat.spend(widening * raw.nbytes, f"constant {tensor.name!r}")
    return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape).astype(dtype.newbyteorder("="))


def _float_constant(model: _Model, index: int) -> np.ndarray | None:
    """Float32 value of tensor ``index``, looking through a DEQUANTIZE of float16."""
    tensor = model.tensors[index]
    producer = model.producers.get(index)
    if producer is not None and producer.code == _DEQUANTIZE and producer.inputs:
        if producer.inputs[0] < 0:
            raise model.flat.fail("DEQUANTIZE without an input", tensor.name)
        source = model.tensors[producer.inputs[0]]
        if source.dtype != _FLOAT16:
            raise model.flat.fail("integer-quantized weights are not supported; use a float "
                                  "TFLite file", tensor.name)
        tensor = source
    value = _tensor_array(model, tensor)
    if value is None:
        return None
    if tensor.dtype not in (_FLOAT32, _FLOAT16):
        raise model.flat.fail(f"weights of type {_DTYPES.get(tensor.dtype, ('', tensor.dtype))[1]}"
                              " are not supported; use a float TFLite file", tensor.name)
    return value.astype(np.float32)  # float16 -> float32 is exact


def _scalar_operand(model: _Model, op: _Op, other_than: int) -> float | None:
    """The scalar constant operand of a binary op whose other operand is ``other_than``."""
    operands = [t for t in op.inputs if t != other_than]
    if len(op.inputs) != 2 or len(operands) != 1 or operands[0] < 0:
        return None
    dequantized = getattr(model.producers.get(operands[0]), "code", None) == _DEQUANTIZE
    if model.tensors[operands[0]].dtype not in (_FLOAT32, _FLOAT16) and not dequantized:
        return None
    value = _float_constant(model, operands[0])
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


# ------------------------------------------------------------------------ scope recovery


def _name_scopes(name: str) -> dict[str, set[str]]:
    """Layer scopes named in a fused tensor name -> what follows each scope."""
    found: dict[str, set[str]] = {}
    for piece in name.split(";"):
        match = _SCOPE_RE.search(piece)
        if match:
            found.setdefault(match["scope"], set()).add(match["rest"] or "")
    return found


def _op_names(model: _Model, op: _Op) -> list[str]:
    """Names of the kernel, bias and output tensors of a conv op."""
    indices = [t for t in (*op.inputs[1:3], *op.outputs[:1]) if t >= 0]
    return [model.tensors[t].name for t in indices]


def _assign_scope(model: _Model, op: _Op) -> str:
    depthwise = op.code == _DEPTHWISE_CONV_2D
    votes: Counter[str] = Counter()
    for name in _op_names(model, op):
        fitting = [s for s in _name_scopes(name) if s.endswith("/depthwise") == depthwise]
        votes.update(fitting)
        if fitting:  # the converter lists the op's own location first: count it twice
            votes[fitting[0]] += 1
    ranked = votes.most_common()
    if not ranked:
        raise model.flat.fail(
            f"operator {op.index} ({op.name}) has no TF-Slim MobileNet scope in its tensor "
            f"names {_op_names(model, op)}; is this a TF-Slim MobileNet file?")
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = [s for s, n in ranked if n == ranked[0][1]]
        raise model.flat.fail(f"operator {op.index} ({op.name}): tensor names fit several "
                              f"scopes equally well: {tied}")
    return ranked[0][0]


def _name_evidence(model: _Model, op: _Op, scope: str) -> set[str]:
    """What the op's tensor names say follows ``scope`` (``BatchNorm/...``, ``add``...)."""
    rests: set[str] = set()
    for name in _op_names(model, op):
        rests |= _name_scopes(name).get(scope, set())
    return rests


def _has_batchnorm(model: _Model, op: _Op, scope: str) -> bool:
    rests = _name_evidence(model, op, scope)
    says_bn = any(r.startswith("BatchNorm") for r in rests)
    says_bias = any(r.startswith(("biases", "BiasAdd")) for r in rests)
    if says_bn and says_bias:
        raise model.flat.fail(f"{scope}: tensor names mention both a BatchNorm and biases")
    if says_bn or says_bias:
        return says_bn
    log.debug("%s: names say nothing about BatchNorm; using the TF-Slim rule", scope)
    return not _BIASED_LAYER_RE.search(scope)


# ----------------------------------------------------------------------------- conv ops


@dataclass
class _Conv:
    info: ConvInfo
    kernel: np.ndarray  # TF layout
    bias: np.ndarray


def _conv_options(model: _Model, op: _Op) -> tuple[str, tuple[int, int], str, tuple[int, int], int]:
    """(padding, stride, activation, dilation, depth_multiplier) of a conv op."""
    opts = op.options
    expected = _CONV_OPTIONS if op.code == _CONV_2D else _DEPTHWISE_OPTIONS
    if opts is None or op.options_type != expected:
        raise model.flat.fail(f"operator {op.index} ({op.name}) lacks its options table "
                              f"(union type {op.options_type}, expected {expected})")
    if op.code == _CONV_2D:  # Conv2DOptions
        act_slot, dil_slots, multiplier = 3, (5, 4), 1
    else:  # DepthwiseConv2DOptions: depth_multiplier sits before the activation
        act_slot, dil_slots, multiplier = 4, (6, 5), opts.scalar(3, "<i", 0)
    padding = _PADDINGS.get(opts.scalar(0, "<b", 0), "UNKNOWN")
    stride = (opts.scalar(2, "<i", 0), opts.scalar(1, "<i", 0))
    activation = _ACTIVATIONS.get(opts.scalar(act_slot, "<b", 0), "UNKNOWN")
    dilation = (opts.scalar(dil_slots[0], "<i", 1), opts.scalar(dil_slots[1], "<i", 1))
    return padding, stride, activation, dilation, multiplier


def _to_tf_layout(model: _Model, op: _Op, kernel: np.ndarray, multiplier: int) -> np.ndarray:
    name = model.tensors[op.inputs[1]].name
    if kernel.ndim != 4:
        raise model.flat.fail(f"conv kernel has rank {kernel.ndim}, expected 4", name)
    if op.code == _CONV_2D:
        return np.ascontiguousarray(kernel.transpose(1, 2, 3, 0))  # OHWI -> HWIO
    _, kh, kw, total = kernel.shape
    in_channels = model.tensors[op.inputs[0]].shape[-1:] or (0,)
    if in_channels[0] > 0 and total % in_channels[0] == 0:
        multiplier = total // in_channels[0]
    if kernel.shape[0] != 1 or multiplier < 1 or total % multiplier:
        raise model.flat.fail(f"depthwise kernel of shape {list(kernel.shape)} does not fit "
                              f"depth multiplier {multiplier}", name)
    return kernel.reshape(kh, kw, total // multiplier, multiplier)


def _sole_consumer(model: _Model, tensor: int) -> _Op | None:
    users = model.consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _read_conv(model: _Model, op: _Op) -> _Conv:
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        raise model.flat.fail(f"operator {op.index} ({op.name}) has no kernel input")
    scope = _assign_scope(model, op)
    kernel = _float_constant(model, op.inputs[1])
    if kernel is None:
        raise model.flat.fail("conv kernel is not a constant", model.tensors[op.inputs[1]].name)
    padding, stride, activation, dilation, multiplier = _conv_options(model, op)
    kernel = _to_tf_layout(model, op, kernel, multiplier)
    out_channels = kernel.shape[-1] * (kernel.shape[-2] if op.code == _DEPTHWISE_CONV_2D else 1)
    bias_index = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    bias = None if bias_index is None else _float_constant(model, bias_index)
    if bias is None:
        bias = np.zeros(out_channels, np.float32)
    if bias.shape != (out_channels,):
        raise model.flat.fail(f"bias of shape {list(bias.shape)} does not fit {out_channels} "
                              "output channels", model.tensors[bias_index].name)
    follower = _sole_consumer(model, op.outputs[0])
    info = ConvInfo(
        op_index=op.index, op=op.name, scope=scope, kernel_shape=tuple(kernel.shape),
        stride=stride, padding=padding, activation=activation,
        followed_by=follower.name if follower else None, dilation=dilation,
        batchnorm_folded=_has_batchnorm(model, op, scope), kernel_tensor=op.inputs[1],
        bias_tensor=bias_index,
    )
    return _Conv(info, kernel, bias)


# ---------------------------------------------------------------------- graph patterns


@dataclass(frozen=True)
class _Gate:
    multiplier: float
    offset: float
    folded: bool


def _gate_multiplier(model: _Model, tensor: int, scope: str) -> tuple[float, _Op]:
    """Scalar of the gate MUL that consumes ``tensor``, checked to be close to 1/6."""
    mul = _sole_consumer(model, tensor)
    value = None if mul is None or mul.code != _MUL else _scalar_operand(model, mul, tensor)
    if value is None or abs(value * 6.0 - 1.0) > 6.0 * _GATE_MULTIPLIER_TOLERANCE:
        raise model.flat.fail(
            f"{scope}: expected the hard-sigmoid gate MUL by ~0.16667 after relu6, found "
            f"{mul.name if mul else 'no single consumer'} ({value}); cannot tell how the "
            "squeeze-excite bias is stored")
    excite = _sole_consumer(model, mul.outputs[0])
    if excite is None or excite.code != _MUL:
        raise model.flat.fail(f"{scope}: gate is not followed by the excite MUL")
    return value, mul


def _se_gate(model: _Model, conv: _Conv) -> _Gate:
    """Recognise the squeeze-excite gate after ``squeeze_excite/Conv_1``."""
    info = conv.info
    op = model.ops[info.op_index]
    if info.activation == "RELU6":
        # Folded form: relu6(conv + (b + 3)) * c. The names must show the folded add.
        folded_add = any(r.startswith("add") for r in _name_evidence(model, op, info.scope))
        if not folded_add:
            raise model.flat.fail(f"{info.scope}: relu6 fused into the conv but no folded "
                                  "'add' in the tensor names; cannot tell the gate offset")
        multiplier, _ = _gate_multiplier(model, op.outputs[0], info.scope)
        return _Gate(multiplier, _HARD_SIGMOID_OFFSET, folded=True)
    add = _sole_consumer(model, op.outputs[0])
    offset = None
    if info.activation == "NONE" and add is not None and add.code == _ADD:
        offset = _scalar_operand(model, add, op.outputs[0])
    if offset is None:
        raise model.flat.fail(f"{info.scope}: unexpected squeeze-excite gate (activation "
                              f"{info.activation}, then {add.name if add else 'several ops'})")
    relu_out = add.outputs[0]
    has_add_options = add.options is not None and add.options_type == _ADD_OPTIONS
    add_act = _ACTIVATIONS.get(add.options.scalar(0, "<b", 0) if has_add_options else 0)
    if add_act != "RELU6":
        relu = _sole_consumer(model, relu_out)
        if relu is None or relu.code != _RELU6:
            raise model.flat.fail(f"{info.scope}: gate ADD is not followed by relu6")
        relu_out = relu.outputs[0]
    multiplier, _ = _gate_multiplier(model, relu_out, info.scope)
    return _Gate(multiplier, offset, folded=False)


def _input_scaling(model: _Model) -> tuple[float | None, float | None]:
    """(scale, offset) of a leading ``x * scale - offset`` on the graph input."""
    if not model.inputs:
        return None, None
    mul = _sole_consumer(model, model.inputs[0])
    if mul is None or mul.code != _MUL:
        return None, None
    scale = _scalar_operand(model, mul, model.inputs[0])
    shift = _sole_consumer(model, mul.outputs[0])
    if scale is None or shift is None or shift.code not in (_SUB, _ADD):
        return None, None
    value = _scalar_operand(model, shift, mul.outputs[0])
    if value is None or (shift.code == _SUB and shift.inputs[0] != mul.outputs[0]):
        return None, None
    return scale, value if shift.code == _SUB else -value


# -------------------------------------------------------------------------- assembling


def _analyse(path: str | Path) -> tuple[TfliteInfo, dict[str, np.ndarray]]:
    path = Path(path)
    model = _parse(path)
    convs = [_read_conv(model, op) for op in model.ops if op.code in (_CONV_2D, _DEPTHWISE_CONV_2D)]
    if not convs:
        raise model.flat.fail("no CONV_2D or DEPTHWISE_CONV_2D op; not a MobileNet TFLite file")
    _check_unique_scopes(model, convs)
    gates = {c.info.scope: _se_gate(model, c) for c in convs
             if c.info.scope.endswith("squeeze_excite/Conv_1")}
    variables: dict[str, np.ndarray] = {}
    for conv in convs:
        gate = gates.get(conv.info.scope)
        offset = gate.offset if gate and gate.folded else None
        variables.update(_slim_variables(conv, offset))
    info = _info(model, path, convs, gates)
    if info.unused_constants:
        log.warning("%s: constants not consumed by any conv: %s", path, info.unused_constants)
    log.debug("%s: %d convs, %d variables", path, len(convs), len(variables))
    return info, variables


def _check_unique_scopes(model: _Model, convs: list[_Conv]) -> None:
    seen = Counter(c.info.scope for c in convs)
    twice = sorted(s for s, n in seen.items() if n > 1)
    if twice:
        raise model.flat.fail(f"several conv ops map to the same TF-Slim scope: {twice}")


def _slim_variables(conv: _Conv, folded_offset: float | None) -> dict[str, np.ndarray]:
    """TF-Slim variables of one conv; ``folded_offset`` is subtracted from the bias."""
    scope, info = conv.info.scope, conv.info
    kernel_name = "depthwise_weights" if info.op == "DEPTHWISE_CONV_2D" else "weights"
    bias = conv.bias
    if folded_offset is not None:
        bias = (bias - np.float32(folded_offset)).astype(np.float32)
    out = {f"{scope}/{kernel_name}": conv.kernel}
    if not info.batchnorm_folded:
        out[f"{scope}/biases"] = bias
        return out
    n = bias.shape[0]
    out[f"{scope}/BatchNorm/gamma"] = np.ones(n, np.float32)
    out[f"{scope}/BatchNorm/beta"] = bias
    out[f"{scope}/BatchNorm/moving_mean"] = np.zeros(n, np.float32)
    out[f"{scope}/BatchNorm/moving_variance"] = np.full(n, _IDENTITY_VARIANCE, np.float32)
    return out


def _single_gate_value(model: _Model, gates: dict[str, _Gate]) -> _Gate | None:
    distinct = {(g.multiplier, g.offset, g.folded) for g in gates.values()}
    if len(distinct) > 1:
        raise model.flat.fail(f"squeeze-excite gates differ between layers: {sorted(distinct)}")
    return next(iter(gates.values()), None)


def _unused_constants(model: _Model, convs: list[_Conv]) -> tuple[str, ...]:
    used = {c.info.kernel_tensor for c in convs} | {c.info.bias_tensor for c in convs}
    for op in model.ops:  # float16 sources behind DEQUANTIZE count as used by the conv
        if op.code == _DEQUANTIZE and op.outputs and op.outputs[0] in used:
            used.add(op.inputs[0])
    unused = []
    for t in model.tensors:
        if t.index in used or t.dtype not in (_FLOAT32, _FLOAT16):
            continue
        if math.prod(t.shape) >= 2 and _buffer_bytes(model, t).nbytes:
            unused.append(t.name)
    return tuple(unused)


def _info(model: _Model, path: Path, convs: list[_Conv], gates: dict[str, _Gate]) -> TfliteInfo:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise model.flat.fail(f"expected one input and one output, found "
                              f"{len(model.inputs)} and {len(model.outputs)}")
    inp, out = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    scale, offset = _input_scaling(model)
    gate = _single_gate_value(model, gates)
    return TfliteInfo(
        path=str(path), version=model.version,
        input_name=inp.name, input_shape=inp.shape, input_dtype=_dtype_name(inp.dtype),
        output_name=out.name, output_shape=out.shape, output_dtype=_dtype_name(out.dtype),
        input_scale=scale, input_offset=offset,
        se_gate_multiplier=gate.multiplier if gate else None,
        se_gate_offset=gate.offset if gate else None,
        se_bias_folded=bool(gate and gate.folded),
        convs=tuple(c.info for c in convs),
        operators=tuple(op.name for op in model.ops),
        unused_constants=_unused_constants(model, convs),
    )


def _dtype_name(code: int) -> str:
    return _DTYPES.get(code, ("", f"type{code}"))[1]


# -------------------------------------------------------------------------------- public


def is_tflite(path: str | Path) -> bool:
    """True if the file's bytes 4..8 are the TFLite identifier ``TFL3`` (content, not name)."""
    try:
        if not Path(path).is_file():  # a FIFO or device would block or never end
            return False
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == _IDENTIFIER


def read_tflite(path: str | Path) -> dict[str, np.ndarray]:
    """Read the TF-Slim MobileNet variables out of a float TFLite file.

    Returns ``{TF-Slim variable name: float32 array}`` in TF layout, in graph order
    (reader contract of :mod:`mobilevec.formats`): ``<scope>/weights`` (HWIO) or
    ``<scope>/depthwise_weights`` (``[k, k, C, M]``) for every conv, plus either
    ``<scope>/biases`` (squeeze-excite convs, ``Conv_2``, logits) or an exact identity
    ``<scope>/BatchNorm/{gamma,beta,moving_mean,moving_variance}`` holding the folded
    bias (see the module docstring). A folded squeeze-excite ``+ 3`` is removed from the
    ``squeeze_excite/Conv_1/biases``. Raises :class:`WeightsError` naming the file (and
    tensor) if it is missing, truncated, corrupt, quantized, or not a TF-Slim MobileNet.
    """
    return _analyse(path)[1]


def inspect_tflite(path: str | Path) -> TfliteInfo:
    """Describe a TFLite file: input/output, input scaling, SE gate and every conv.

    Same parsing and the same errors as :func:`read_tflite`; see :class:`TfliteInfo`.
    """
    return _analyse(path)[0]
