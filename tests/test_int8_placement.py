"""int8 for OpenVINO: the conv-inputs placement, per-channel equalization, bias correction.

References: the fp32 ONNX graph the rewrites start from (equalization must not change
what it computes), per-channel statistics measured here with numpy on that graph's
tensors, and for the real weights the fp32 vectors on photos the export never saw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shared_paths import V2_NPY, V3_TFLITE, needs_native_int8, require

import mobilevec
from mobilevec.export import export, exported_metadata, onnx_model
from mobilevec.export.bias_correction import correct_biases
from mobilevec.export.equalize import MIN_SCALE, REGULAR_ALPHA, equalize_conv_inputs
from mobilevec.export.onnx_runs import session, with_outputs
from mobilevec.export.quantize import _quantize

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

V2, V3 = "mobilenet_v2_100_224", "mobilenet_v3_small_075_224"
SIZE = 64  # small inputs keep the random-weight graphs fast


def _v3_graph(seed: int = 0):
    """The fp32 ONNX graph of a V3 Small 0.75 with random weights and BatchNorm, whose
    channels differ in range as trained ones do (BN scales spread over 0.05-5)."""
    torch.manual_seed(seed)
    model = mobilevec.create(V3, trainable=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.exp(torch.randn(n, generator=g) * 1.2))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return onnx_model(model, image_size=SIZE)


def _batches(count: int = 3, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((8, 3, SIZE, SIZE), dtype=np.float32) for _ in range(count)]


def _run(model, x: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    run = session(with_outputs(model, names) if names else model)
    return run.run(None, {model.graph.input[0].name: x})


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


# --- equalization ---------------------------------------------------------------------
def test_equalization_keeps_the_function_and_evens_out_conv_input_ranges():
    fp32 = _v3_graph()
    batches = _batches()
    equalized = equalize_conv_inputs(fp32, batches)
    x = np.concatenate(batches)
    ref = _run(fp32, x)[0]
    # float32 rounding of rescaled weights, relative to the vectors' scale
    np.testing.assert_allclose(_run(equalized, x)[0], ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())

    producer = {n.output[0]: n for n in equalized.graph.node}
    original = {n.output[0] for n in fp32.graph.node}
    muls = {n.output[0] for n in equalized.graph.node if n.name.endswith("/equalized")}
    convs = [n for n in equalized.graph.node if n.op_type == "Conv"
             and "squeeze_excite" not in n.name and n.input[0] in producer]
    inputs = sorted({n.input[0] for n in convs})
    after = dict(zip(inputs, _run(equalized, x, inputs), strict=True))
    checked = {"Relu": 0, "HardSwish": 0, "Mul": 0}
    for conv in convs:
        tensor = conv.input[0]
        act = producer[producer[tensor].input[0]] if tensor in muls else producer[tensor]
        if act.op_type not in checked or (act.op_type == "Mul" and _group(conv) > 1):
            continue
        # measured on the fp32 graph, by hand: the channel ranges the rewrite must even out
        raw = np.abs(_run(fp32, x, [act.output[0]])[0]).max(axis=(0, 2, 3))
        widest = raw.max()
        alive = raw > 2 * MIN_SCALE * widest
        assert widest / np.median(raw) > 1.5  # the fp32 channels really were uneven
        got = np.abs(after[tensor]).max(axis=(0, 2, 3))
        if _group(conv) > 1:  # depthwise: every channel spans the widest one's range
            want = np.full_like(raw, widest)
        else:  # regular: h_c / r_c**alpha, r_c = raw_c / widest
            want = raw / np.maximum(raw / widest, MIN_SCALE) ** REGULAR_ALPHA
        np.testing.assert_allclose(got[alive], want[alive], rtol=1e-4)
        # a ReLU after a convolution takes the scale for free; others need one Mul node
        folded = act.op_type == "Relu" and producer[act.input[0]].op_type == "Conv"
        assert (tensor in muls) != folded and (folded <= (tensor in original))
        checked[act.op_type] += 1
    assert checked["Relu"] >= 2 and checked["HardSwish"] >= 5 and checked["Mul"] >= 3, checked


def test_equalization_leaves_v2_relu6_graphs_alone():
    model = mobilevec.create(V2, trainable=False)
    fp32 = onnx_model(model, image_size=SIZE)
    equalized = equalize_conv_inputs(fp32, _batches(1))
    assert [n.op_type for n in equalized.graph.node] == [n.op_type for n in fp32.graph.node]
    for a, b in zip(equalized.graph.initializer, fp32.graph.initializer, strict=True):
        assert a.raw_data == b.raw_data


# --- bias correction --------------------------------------------------------------------
def _mean_errors(int8, fp32, batches, names) -> list[np.ndarray]:
    x = np.concatenate(batches)
    got = _run(int8, x, names)
    ref = _run(fp32, x, names)
    return [(g - r).mean(axis=(0, 2, 3)) for g, r in zip(got, ref, strict=True)]


@needs_native_int8
def test_bias_correction_zeroes_each_int8_convolutions_mean_error(tmp_path):
    fp32 = equalize_conv_inputs(_v3_graph(), _batches())
    batches = _batches()
    src = tmp_path / "fp32.onnx"
    onnx.save(fp32, src)
    int8 = _quantize(src, tmp_path / "int8.onnx", batches, fp32, [], "conv-inputs")
    corrected = correct_biases(int8, fp32, batches)

    inits = {i.name: i for i in corrected.graph.initializer}
    producer = {n.output[0]: n for n in corrected.graph.node}
    convs = [n for n in corrected.graph.node if n.op_type == "Conv"
             and getattr(producer.get(n.input[2]), "op_type", "") == "DequantizeLinear"]
    assert len(convs) > 20
    assert not any("squeeze_excite" in n.name for n in convs)  # SE convs stay fp32
    names = [c.output[0] for c in convs]
    steps = [onnx.numpy_helper.to_array(inits[producer[c.input[2]].input[1]]) for c in convs]
    before = _mean_errors(int8, fp32, batches, names)
    after = _mean_errors(corrected, fp32, batches, names)
    # the int32 bias moves in steps of x_scale * w_scale: what is left is half a step
    # of rounding (plus float noise), where before it was many steps in some layers
    assert max(float(np.max(np.abs(e) / s)) for e, s in zip(before, steps, strict=True)) > 5
    for name, e, s in zip(names, after, steps, strict=True):
        assert np.all(np.abs(e) <= 0.5 * s + 1e-4 * (1 + np.abs(e))), name


# --- the real weights -----------------------------------------------------------------
@needs_native_int8
@pytest.mark.parametrize("name, weights, most_fp32_blocks", [(V3, V3_TFLITE, 3), (V2, V2_NPY, 0)])
def test_openvino_int8_export_keeps_vectors_at_cosine_099(name, weights, most_fp32_blocks,
                                                           data_dir, tmp_path):
    pytest.importorskip("openvino")
    from mobilevec.data.images import load_array
    from mobilevec.engines import load_engine
    from mobilevec.export import calibration_paths

    model = mobilevec.create(name, weights=require(weights), trainable=False)
    calibration = calibration_paths(data_dir / "imagenet-samples", 128)
    xml = export(model, tmp_path / "int8.xml", "openvino", calibration=calibration)[0]
    meta = exported_metadata(xml)
    assert meta["precision"] == "int8" and meta["int8_placement"] == "conv-inputs"
    kept = [b for b in meta["int8_fp32_blocks"].split(",") if b]
    assert len(kept) <= most_fp32_blocks
    # photos from another collection than the calibration ones
    photos = calibration_paths(data_dir / "tf_flowers5", 48)
    x = np.stack([load_array(p, 224) for p in photos])
    got = load_engine(xml, "openvino")(x)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.mean() >= 0.99, cosine.mean()
    assert np.abs(got - ref).max() > 1e-3  # really quantized


# --- the CLI ----------------------------------------------------------------------------
def test_cli_int8_placement_defaults_by_format_and_can_be_overridden(tmp_path, capsys):
    from PIL import Image

    from mobilevec.cli.app import main

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        pixels = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(photos / f"{i}.png")
    common = ["export", "--model", V3, "--image-size", str(SIZE), "--int8", "--calibrate",
              str(photos)]
    out = tmp_path / "v3.onnx"
    assert main([*common, "-o", str(out)]) == 0
    assert exported_metadata(out)["int8_placement"] == "all-ops"
    assert "all-ops placement" in capsys.readouterr().out
    assert main([*common, "--int8-placement", "conv-inputs", "-o", str(out)]) == 0
    meta = exported_metadata(out)
    assert meta["int8_placement"] == "conv-inputs"
    printed = capsys.readouterr().out
    assert "conv-inputs placement" in printed and meta["int8_cosine_mean"] in printed
    # activations are quantized only where a convolution reads them (a residual Add may
    # share a block output's rounding with the next block's convolution)
    nodes = onnx.load(str(out)).graph.node
    quantized = {n.output[0] for n in nodes if n.op_type == "QuantizeLinear"}
    dequantized = {n.output[0] for n in nodes
                   if n.op_type == "DequantizeLinear" and n.input[0] in quantized}
    readers = [n for n in nodes if set(n.input) & dequantized]
    assert any(n.op_type == "Conv" for n in readers)
    assert {n.op_type for n in readers} <= {"Conv", "Add"}
    for add in (n for n in readers if n.op_type == "Add"):
        assert any(n.op_type == "Conv" and set(n.input) & set(add.input) for n in readers)
