"""mobilevec.formats.tflite against the real TF Hub MobileNet V3 Small 0.75 TFLite file.

The independent references are the PyPI ``tflite`` flatbuffer bindings (a generated
parser, not ours) and, where a test says so, the LiteRT interpreter. Every test needs the
real file (never committed); without it the tests skip and say where they looked. The
corruption tests break a copy of it in ``tmp_path``.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilevec.errors import WeightsError
from mobilevec.formats.tflite import inspect_tflite, is_tflite, read_tflite

tflite = pytest.importorskip("tflite", reason="the PyPI 'tflite' package is the cross-check")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))
from tflite_builder import synthetic_block  # noqa: E402  (fuzz/ holds the shared builder)

WEIGHTS_DIR = Path(os.environ.get("MOBILEVEC_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
V3_FILE = "mobilenet_v3_small_075_224_embedder.tflite"
NET = "MobilenetV3"
CONV_2D, DEPTHWISE_CONV_2D = 3, 4
BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")

# V3 Small 0.75 (PROVENANCE.md section 1): block -> (in, expansion, kernel, stride, SE, out).
# expansion None: no expand conv (first block). SE 0: no squeeze-excite.
V3_SMALL_075 = {
    "expanded_conv": (16, None, 3, 2, 8, 16),
    "expanded_conv_1": (16, 72, 3, 2, 0, 24),
    "expanded_conv_2": (24, 88, 3, 1, 0, 24),
    "expanded_conv_3": (24, 96, 5, 2, 24, 32),
    "expanded_conv_4": (32, 192, 5, 1, 48, 32),
    "expanded_conv_5": (32, 192, 5, 1, 48, 32),
    "expanded_conv_6": (32, 96, 5, 1, 24, 40),
    "expanded_conv_7": (40, 120, 5, 1, 32, 40),
    "expanded_conv_8": (40, 240, 5, 2, 64, 72),
    "expanded_conv_9": (72, 432, 5, 1, 112, 72),
    "expanded_conv_10": (72, 432, 5, 1, 112, 72),
}


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every TF-Slim variable of the V3 Small 0.75 feature vector, with its TF shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(scope: str, kernel: tuple[int, ...], biased: bool = False) -> None:
        leaf = "depthwise_weights" if scope.endswith("/depthwise") else "weights"
        shapes[f"{NET}/{scope}/{leaf}"] = kernel
        width = kernel[2] * kernel[3] if leaf == "depthwise_weights" else kernel[3]
        parts = ["biases"] if biased else [f"BatchNorm/{p}" for p in BN_PARTS]
        shapes.update({f"{NET}/{scope}/{p}": (width,) for p in parts})

    conv("Conv", (3, 3, 3, 16))
    for block, (cin, exp, k, _, se, cout) in V3_SMALL_075.items():
        width = exp or cin
        if exp:
            conv(f"{block}/expand", (1, 1, cin, exp))
        conv(f"{block}/depthwise", (k, k, width, 1))
        if se:
            conv(f"{block}/squeeze_excite/Conv", (1, 1, width, se), biased=True)
            conv(f"{block}/squeeze_excite/Conv_1", (1, 1, se, width), biased=True)
        conv(f"{block}/project", (1, 1, width, cout))
    conv("Conv_1", (1, 1, 72, 432))
    conv("Conv_2", (1, 1, 432, 1024), biased=True)
    return shapes


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def real_tflite() -> Path:
    path = WEIGHTS_DIR / V3_FILE
    if not path.is_file():
        pytest.skip(f"real TFLite file not found at {path}; set MOBILEVEC_WEIGHTS_DIR")
    return path


@pytest.fixture(scope="module")
def variables(real_tflite: Path) -> dict[str, np.ndarray]:
    return read_tflite(real_tflite)


@pytest.fixture(scope="module")
def info(real_tflite: Path):
    return inspect_tflite(real_tflite)


@pytest.fixture(scope="module")
def ref(real_tflite: Path):
    """The same file as parsed by the PyPI ``tflite`` bindings."""
    data = real_tflite.read_bytes()
    return data, tflite.Model.GetRootAsModel(data, 0)


def _ref_graph(ref):
    return ref[1].Subgraphs(0)


def _ref_array(ref, index: int) -> np.ndarray:
    """Float32 constant of tensor ``index`` according to the independent parser."""
    model, graph = ref[1], _ref_graph(ref)
    tensor = graph.Tensors(index)
    assert tensor.Type() == 0, "the real file is float32 throughout"
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy().tobytes()
    return np.frombuffer(raw, "<f4").reshape(tensor.ShapeAsNumpy()).astype(np.float32)


def _ref_conv_ops(ref) -> list:
    model, graph = ref[1], _ref_graph(ref)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin in (CONV_2D, DEPTHWISE_CONV_2D):
            ops.append((i, builtin, op))
    return ops


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(
        a.view(np.uint32), b.view(np.uint32)
    )


# ------------------------------------------------------------------- variables and values


def test_variable_names_are_exactly_the_tf_slim_v3_small_set(variables):
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(variables))
    extra = sorted(set(variables) - set(expected))
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"


@pytest.mark.parametrize("name", sorted(_expected_shapes()))
def test_variable_has_the_v3_small_075_shape_and_float32(variables, name):
    assert variables[name].shape == _expected_shapes()[name]
    assert variables[name].dtype == np.float32


def test_kernels_and_biases_are_bit_identical_to_the_independent_parser(variables, info, ref):
    ref_ops = {i: (builtin, op) for i, builtin, op in _ref_conv_ops(ref)}
    graph = _ref_graph(ref)
    for conv in info.convs:
        builtin, op = ref_ops[conv.op_index]
        inputs = op.InputsAsNumpy()
        assert (conv.kernel_tensor, conv.bias_tensor) == (inputs[1], inputs[2]), conv.scope
        stored = _ref_array(ref, conv.kernel_tensor)
        if builtin == CONV_2D:  # TFLite OHWI -> TF HWIO
            expected_kernel = stored.transpose(1, 2, 3, 0)
            name = f"{conv.scope}/weights"
        else:  # TFLite [1, kh, kw, C*M] -> TF [kh, kw, C, M]
            channels = int(graph.Tensors(int(inputs[0])).ShapeAsNumpy()[-1])
            _, kh, kw, total = stored.shape
            expected_kernel = stored.reshape(kh, kw, channels, total // channels)
            name = f"{conv.scope}/depthwise_weights"
        assert _same_bits(variables[name], np.ascontiguousarray(expected_kernel)), name
        stored_bias = _ref_array(ref, conv.bias_tensor)
        if conv.scope.endswith("squeeze_excite/Conv_1"):
            stored_bias = stored_bias - np.float32(3.0)  # the documented unfold
        bias_name = "BatchNorm/beta" if conv.batchnorm_folded else "biases"
        assert _same_bits(variables[f"{conv.scope}/{bias_name}"], stored_bias), conv.scope


def test_every_conv_kernel_and_bias_in_the_file_is_consumed_exactly_once(info, ref):
    from_file = []
    for _, _, op in _ref_conv_ops(ref):
        inputs = op.InputsAsNumpy()
        from_file += [int(inputs[1]), int(inputs[2])]
    consumed = [c.kernel_tensor for c in info.convs] + [c.bias_tensor for c in info.convs]
    assert sorted(consumed) == sorted(from_file)
    assert len(set(consumed)) == len(consumed), "a tensor was consumed twice"
    # Every float constant with more than one element is a conv kernel or bias.
    model, graph = ref[1], _ref_graph(ref)
    leftovers = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        has_data = model.Buffers(tensor.Buffer()).DataLength() > 0
        weight_like = tensor.Type() == 0 and np.prod(tensor.ShapeAsNumpy()) >= 2
        if has_data and weight_like and t not in consumed:
            leftovers.append(tensor.Name().decode())
    assert not leftovers, f"constants left over: {leftovers}"
    assert info.unused_constants == ()


def test_folded_batchnorm_is_an_exact_identity_in_float32(variables):
    eps = np.float32(1e-3)  # TF-Slim BatchNorm epsilon
    bn_scopes = [k[: -len("/BatchNorm/gamma")] for k in variables if k.endswith("BatchNorm/gamma")]
    assert len(bn_scopes) == 1 + 11 + 10 + 11 + 1  # stem, dw, expand, project, Conv_1
    for scope in bn_scopes:
        gamma, mean, var = (variables[f"{scope}/BatchNorm/{p}"] for p in ("gamma", "moving_mean",
                                                                          "moving_variance"))
        assert np.all(gamma == 1) and np.all(mean == 0), scope
        assert np.all(var + eps == np.float32(1.0)), scope
        assert np.all(np.float32(1.0) / np.sqrt(var + eps) == np.float32(1.0)), scope
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    beta = variables[f"{NET}/Conv_1/BatchNorm/beta"][:1]
    var = variables[f"{NET}/Conv_1/BatchNorm/moving_variance"][:1]
    assert np.array_equal((x - 0) / np.sqrt(var + eps) * 1 + beta, x + beta)


def test_se_gate_offset_is_unfolded_from_exactly_the_se_conv_1_biases(variables, info, ref):
    three = np.float32(3.0)
    unfolded = []
    for conv in info.convs:
        if conv.batchnorm_folded:
            continue
        stored = _ref_array(ref, conv.bias_tensor)
        returned = variables[f"{conv.scope}/biases"]
        if conv.scope.endswith("squeeze_excite/Conv_1"):
            assert np.all(stored - returned == three), conv.scope
            assert np.all(returned + three == stored), conv.scope  # adding 3 back is lossless
            unfolded.append(conv.scope)
        else:  # SE reduce conv and Conv_2 carry their bias untouched
            assert _same_bits(returned, stored), conv.scope
    assert len(unfolded) == 9  # every SE block of V3 Small
    assert info.se_bias_folded and info.se_gate_offset == 3.0


# ------------------------------------------------------------------------- inspect_tflite


def test_inspect_finds_input_output_scaling_and_gate(info):
    assert info.version == 3
    assert info.input_shape == (1, 224, 224, 3) and info.input_dtype == "float32"
    assert info.input_name == "serving_default_inputs:0"
    assert info.output_shape == (1, 1024) and info.output_dtype == "float32"
    assert info.output_name == "StatefulPartitionedCall:0"
    assert (info.input_scale, info.input_offset) == (2.0, 1.0)
    assert info.se_gate_multiplier == pytest.approx(0.16667, abs=1e-7)
    assert info.se_gate_multiplier == float(np.float32(0.16667))  # the literal, not 1/6


def test_inspect_agrees_with_the_litert_interpreter_on_input_and_output(info, real_tflite):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT cross-check")
    interpreter = litert.Interpreter(model_path=str(real_tflite))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert (inp["name"], tuple(inp["shape"]), inp["dtype"]) == (
        info.input_name, info.input_shape, np.float32)
    assert (out["name"], tuple(out["shape"])) == (info.output_name, info.output_shape)


def test_inspect_lists_every_conv_with_its_v3_small_geometry(info):
    by_scope = {c.scope: c for c in info.convs}
    assert len(by_scope) == len(info.convs) == 53
    assert [c.op_index for c in info.convs] == sorted(c.op_index for c in info.convs)
    stem = by_scope[f"{NET}/Conv"]
    assert (stem.stride, stem.kernel_shape) == ((2, 2), (3, 3, 3, 16))
    assert stem.followed_by == "HARD_SWISH"
    for block, (_, _, k, stride, se, _) in V3_SMALL_075.items():
        dw = by_scope[f"{NET}/{block}/depthwise"]
        assert dw.op == "DEPTHWISE_CONV_2D" and dw.kernel_shape[:2] == (k, k), block
        assert dw.stride == (stride, stride), block
        if se:
            assert by_scope[f"{NET}/{block}/squeeze_excite/Conv"].activation == "RELU"
            assert by_scope[f"{NET}/{block}/squeeze_excite/Conv_1"].activation == "RELU6"
        assert by_scope[f"{NET}/{block}/project"].activation == "NONE"
    assert all(c.padding == "SAME" and c.dilation == (1, 1) for c in info.convs)
    pointwise = [c for c in info.convs if c.op == "CONV_2D" and c.scope != stem.scope]
    assert all(c.stride == (1, 1) and c.kernel_shape[:2] == (1, 1) for c in pointwise)
    assert by_scope[f"{NET}/Conv_2"].followed_by == "HARD_SWISH"
    assert not by_scope[f"{NET}/Conv_2"].batchnorm_folded


def test_is_tflite_looks_at_content_not_file_name(real_tflite, tmp_path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(real_tflite.read_bytes()[:64])
    impostor = tmp_path / "model.tflite"
    impostor.write_bytes(b"\x00" * 64)
    assert is_tflite(real_tflite) and is_tflite(renamed)
    assert not is_tflite(impostor)
    assert not is_tflite(tmp_path / "missing.tflite")


# -------------------------------------------------------------------------- broken files


def _copy_with(tmp_path: Path, data: bytes, name: str = "broken.tflite") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_weights_error_naming(path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        read_tflite(path)
    assert str(path) in str(caught.value) and caught.value.path == str(path)


def test_missing_file_raises_weights_error(tmp_path):
    _assert_weights_error_naming(tmp_path / "absent.tflite")


@pytest.mark.parametrize("keep", [0, 7, 100, 0.25, 0.5, 0.9, 0.999])
def test_truncated_file_raises_weights_error_naming_it(real_tflite, tmp_path, keep):
    data = real_tflite.read_bytes()
    # The flatbuffer ends where the appended metadata zip starts; cut inside it.
    flatbuffer_end = data.rindex(b"PK\x03\x04")
    n = keep if isinstance(keep, int) else int(flatbuffer_end * keep)
    _assert_weights_error_naming(_copy_with(tmp_path, data[:n]))


def test_flipped_identifier_raises_weights_error(real_tflite, tmp_path):
    data = bytearray(real_tflite.read_bytes())
    data[4:8] = b"TFL2"
    path = _copy_with(tmp_path, bytes(data))
    assert not is_tflite(path)
    _assert_weights_error_naming(path)


def _buffer_data_field(ref, index: int) -> tuple[int, int, int]:
    """(position of the data uoffset, first data byte, length) of buffer ``index``."""
    buf = ref[1].Buffers(index)
    field = buf._tab.Offset(4)
    return buf._tab.Pos + field, buf._tab.Vector(field), buf.DataLength()


def _conv_2_kernel_buffer(ref, info) -> int:
    conv_2 = next(c for c in info.convs if c.scope == f"{NET}/Conv_2")
    return _ref_graph(ref).Tensors(conv_2.kernel_tensor).Buffer()


def test_buffer_offset_pointing_outside_the_file_raises(real_tflite, tmp_path, ref, info):
    data = bytearray(ref[0])
    where, _, _ = _buffer_data_field(ref, _conv_2_kernel_buffer(ref, info))
    struct.pack_into("<I", data, where, len(data) + 4096 - where)
    _assert_weights_error_naming(_copy_with(tmp_path, bytes(data)))


def test_buffer_length_running_past_the_end_raises(real_tflite, tmp_path, ref, info):
    data = bytearray(ref[0])
    _, start, _ = _buffer_data_field(ref, _conv_2_kernel_buffer(ref, info))
    struct.pack_into("<I", data, start - 4, 0x7FFFFFF0)
    _assert_weights_error_naming(_copy_with(tmp_path, bytes(data)))


def _move_buffers_outside(ref, *, past_end: bool = False) -> bytes:
    """The file rewritten with every constant in the ``Buffer.offset``/``size`` form.

    Each buffer's data is appended to the file and a new Buffer table (fields offset and
    size only) is appended after it; the old inline bytes are zeroed so that reading them
    by mistake would show. ``past_end`` makes the last offset point beyond the file.
    """
    data, model = ref
    out = bytearray(data)
    buffers_vector = model._tab.Vector(model._tab.Offset(12))  # Model.buffers is slot 4
    for i in range(model.BuffersLength()):
        if model.Buffers(i).DataLength() == 0:
            continue
        _, start, n = _buffer_data_field(ref, i)
        payload = bytes(data[start : start + n])
        out[start : start + n] = bytes(n)
        out += bytes(-len(out) % 16)
        offset = len(out) + (1 << 20 if past_end else 0)
        out += payload
        out += bytes(-len(out) % 8)
        vtable = len(out)
        out += struct.pack("<5H", 10, 24, 0, 8, 16)  # slots: data absent, offset, size
        out += bytes(-len(out) % 8)
        table = len(out)
        out += struct.pack("<iIQQ", table - vtable, 0, offset, n)
        slot = buffers_vector + 4 * i
        struct.pack_into("<I", out, slot, table - slot)
    return bytes(out)


def test_buffers_stored_outside_the_flatbuffer_read_the_same(variables, ref, tmp_path):
    path = _copy_with(tmp_path, _move_buffers_outside(ref), "external.tflite")
    moved = read_tflite(path)
    assert moved.keys() == variables.keys()
    assert all(_same_bits(moved[k], variables[k]) for k in variables)


def test_litert_runs_the_moved_buffer_file_identically(real_tflite, ref, tmp_path):
    """Proves the rewritten file is a valid offset/size TFLite file, not our own dialect."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT cross-check")
    path = _copy_with(tmp_path, _move_buffers_outside(ref), "external.tflite")
    x = np.random.default_rng(1).random((1, 224, 224, 3), dtype=np.float32)
    outputs = []
    for model_path in (real_tflite, path):
        interpreter = litert.Interpreter(model_path=str(model_path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert np.array_equal(*outputs)


def test_external_buffer_offset_beyond_the_file_raises(ref, tmp_path):
    path = _copy_with(tmp_path, _move_buffers_outside(ref, past_end=True))
    _assert_weights_error_naming(path)


def test_random_damage_to_the_flatbuffer_tables_never_escapes_as_another_error(ref, tmp_path):
    """Bytes outside the weight data (vtables, offsets, vectors, names) are overwritten at
    random; reading must either succeed or raise WeightsError, never IndexError & co."""
    data, model = ref
    weight_bytes = np.zeros(len(data), bool)
    for i in range(model.BuffersLength()):
        if model.Buffers(i).DataLength():
            _, start, n = _buffer_data_field(ref, i)
            weight_bytes[start : start + n] = True
    weight_bytes[data.rindex(b"PK\x03\x04") :] = True  # the appended metadata zip
    structure = np.flatnonzero(~weight_bytes)
    rng = random.Random(20240601)
    path = tmp_path / "damaged.tflite"
    for _ in range(150):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 2, 4))):
            pos = int(structure[rng.randrange(len(structure))])
            damaged[pos] = rng.choice((0x00, 0xFF, damaged[pos] ^ 0x01, damaged[pos] ^ 0x80))
        path.write_bytes(bytes(damaged))
        try:
            read_tflite(path)
        except WeightsError as exc:
            assert exc.path == str(path)


# ------------------------------------------------------- unexpected squeeze-excite gates


def _first_se_conv_1(ref, info):
    conv = next(c for c in info.convs if c.scope.endswith("squeeze_excite/Conv_1"))
    return conv, _ref_graph(ref).Operators(conv.op_index)


def test_gate_multiplier_far_from_one_sixth_is_refused_not_guessed(ref, info, tmp_path):
    conv, op = _first_se_conv_1(ref, info)
    graph = _ref_graph(ref)
    se_out = op.OutputsAsNumpy()[0]
    gate_mul = next(  # the op that consumes the SE conv output
        graph.Operators(i) for i in range(conv.op_index + 1, graph.OperatorsLength())
        if se_out in graph.Operators(i).InputsAsNumpy()
    )
    scalar = next(int(t) for t in gate_mul.InputsAsNumpy() if t != se_out)
    _, start, n = _buffer_data_field(ref, graph.Tensors(scalar).Buffer())
    assert n == 4
    data = bytearray(ref[0])
    struct.pack_into("<f", data, start, 0.5)
    path = _copy_with(tmp_path, bytes(data))
    with pytest.raises(WeightsError, match="gate"):
        read_tflite(path)


def test_se_conv_without_fused_relu6_is_refused_not_guessed(ref, info, tmp_path):
    conv, op = _first_se_conv_1(ref, info)
    options = op.BuiltinOptions()  # Conv2DOptions: fused_activation_function is slot 3
    field = options.Offset(10)
    assert field and ref[0][options.Pos + field] == 3  # RELU6
    data = bytearray(ref[0])
    data[options.Pos + field] = 0  # NONE: now the conv output goes straight into the MUL
    path = _copy_with(tmp_path, bytes(data))
    with pytest.raises(WeightsError, match="squeeze-excite gate"):
        read_tflite(path)


# ------------------------------------------- a synthetic file for the other graph shapes
# The real file covers one converter's output. These tests build a small TF-Slim-named
# V3 block with the PyPI flatbuffers/tflite builders to reach the other accepted forms:
# an unfolded SE gate (ADD of the offset, relu6, MUL), a float16 depthwise kernel behind
# DEQUANTIZE with depth multiplier 2, and bias names that say nothing about BatchNorm.

@pytest.mark.parametrize("fused_relu6", [True, False], ids=["add+relu6 fused", "relu6 op"])
@pytest.mark.parametrize("gate_offset", [3.0, 2.5])
def test_unfolded_gate_fp16_depthwise_and_unnamed_batchnorm(tmp_path, gate_offset, fused_relu6):
    data, values = synthetic_block(gate_offset, fused_relu6)
    path = _copy_with(tmp_path, data, "synthetic.tflite")
    got, info = read_tflite(path), inspect_tflite(path)
    s = f"{NET}/expanded_conv"
    # fp16 kernel widened exactly; [1, 3, 3, C*M] -> [3, 3, C, M] with C = 4, M = 2
    dw = values["dw"].astype(np.float32)
    assert _same_bits(got[f"{s}/depthwise/depthwise_weights"], dw.reshape(3, 3, 4, 2))
    assert got[f"{s}/depthwise/depthwise_weights"][1, 2, 3, 1] == dw[0, 1, 2, 3 * 2 + 1]
    # unfolded gate: bias returned as stored, offset read from the file
    assert _same_bits(got[f"{s}/squeeze_excite/Conv_1/biases"], values["se1_b"])
    assert info.se_gate_offset == gate_offset and not info.se_bias_folded
    assert info.se_gate_multiplier == float(np.float32(0.16667))
    # names without BatchNorm/biases evidence: the TF-Slim rule decides
    assert _same_bits(got[f"{s}/depthwise/BatchNorm/beta"], values["dw_b"])
    assert _same_bits(got[f"{s}/project/BatchNorm/beta"], values["proj_b"])
    assert _same_bits(got[f"{s}/squeeze_excite/Conv/biases"], values["se_b"])
    assert _same_bits(got[f"{s}/project/weights"], values["proj"].transpose(1, 2, 3, 0))
    assert info.unused_constants == () and (info.input_scale, info.input_offset) == (None, None)
    assert [c.scope for c in info.convs] == [f"{s}/depthwise", f"{s}/squeeze_excite/Conv",
                                            f"{s}/squeeze_excite/Conv_1", f"{s}/project"]


def test_synthetic_file_is_valid_for_litert(tmp_path):
    """The builder above writes real TFLite, not a dialect only our reader accepts."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT cross-check")
    data, _ = synthetic_block(3.0, fused_relu6=False)
    interpreter = litert.Interpreter(model_path=str(_copy_with(tmp_path, data, "s.tflite")))
    interpreter.allocate_tensors()
    interpreter.set_tensor(0, np.ones((1, 8, 8, 4), np.float32))
    interpreter.invoke()
    assert np.isfinite(interpreter.get_tensor(20)).all()
