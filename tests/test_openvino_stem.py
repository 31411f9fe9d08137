"""The OpenVINO engine's int8 first convolution and its per-batch-size static shapes.

References: the torch module on the real weights (fp32), hand-computed roundings, and
OpenVINO's own runtime graph (which precision the convolution ran in).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shared_paths import DATA_DIR, V2_NPY, V3_TFLITE, needs_native_int8, require

import mobilevec

ov = pytest.importorskip("openvino")
pytest.importorskip("onnx")

from mobilevec.engines import openvino_engine  # noqa: E402
from mobilevec.engines.openvino_stem import quantize_stem, round_keeping_sums  # noqa: E402

V2, V3 = "mobilenet_v2_100_224", "mobilenet_v3_small_075_224"
WEIGHTS = {V2: V2_NPY, V3: V3_TFLITE}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def modules() -> dict[str, mobilevec.MobileNet]:
    return {name: mobilevec.create(name, weights=require(path), trainable=False)
            for name, path in WEIGHTS.items()}


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    from mobilevec.data.images import load_array

    files = sorted(require(DATA_DIR / "imagenet-samples").glob("*.JPEG"))[::25]
    return np.stack([load_array(f, 224) for f in files])


def _torch(module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


# --- rounding ------------------------------------------------------------------------
def test_rounding_keeps_each_slice_sum_where_plain_rounding_drifts():
    # three taps of 0.4: each rounds to 0, but their sum 1.2 rounds to 1
    exact = np.full((1, 1, 1, 3), 0.4)
    kept = round_keeping_sums(exact, np.ones((1, 1, 1, 1)))
    assert sorted(kept.ravel().tolist()) == [0.0, 0.0, 1.0]

    w = np.random.default_rng(3).normal(size=(16, 3, 3, 3))
    step = np.abs(w).reshape(16, -1).max(1).reshape(-1, 1, 1, 1) / 127
    kept = round_keeping_sums(w, step)
    assert np.all(kept == np.round(kept))
    assert np.all(np.abs(kept - w / step) < 1)  # every tap within one step of its value
    np.testing.assert_array_equal(kept.sum(axis=(2, 3)), np.round((w / step).sum(axis=(2, 3))))
    plain_drift = np.abs((np.round(w / step) - w / step).sum(axis=(2, 3)))
    kept_drift = np.abs((kept - w / step).sum(axis=(2, 3)))
    assert np.all(kept_drift <= 0.5 + 1e-9) and kept_drift.mean() < plain_drift.mean()


# --- the rewrite ---------------------------------------------------------------------
def _openvino_model(module):
    from mobilevec.export import fuse, openvino_model
    from mobilevec.export.metadata import build_metadata
    from mobilevec.export.onnx_graph import to_onnx

    net = fuse(module, None)
    return openvino_model(to_onnx(net, metadata=build_metadata(
        net.model, net.num_features, net.image_size, source=None)))


def _runtime_precision(compiled, layer: str) -> str:
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_friendly_name() == layer:
            return str(op.get_rt_info()["runtimePrecision"].astype(str))
    raise KeyError(layer)


@pytest.mark.parametrize("name", [V2, V3])
def test_the_first_convolution_runs_int8_and_the_rewrite_applies_once(modules, name):
    model = _openvino_model(modules[name])
    assert quantize_stem(model)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert _runtime_precision(compiled, "Conv/Conv2D/WithoutBiases").lower() in {"u8", "i8"}
    assert not quantize_stem(model)  # its input is quantized now: nothing left to rewrite


def test_a_graph_without_the_centring_offset_is_left_alone():
    import openvino.opset13 as ops

    image = ops.parameter([1, 3, 8, 8], np.float32, name="images")
    kernel = ops.constant(np.ones((4, 3, 3, 3), np.float32))
    conv = ops.convolution(image, kernel, [2, 2], [0, 0], [1, 1], [1, 1])
    model = ov.Model([conv], [image])
    assert not quantize_stem(model)
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("FakeQuantize") == 0


@needs_native_int8
@pytest.mark.parametrize("name", [V2, V3])
def test_int8_stem_pads_with_the_centre_and_stays_close_to_torch(modules, photos, name):
    """In fp32 everywhere else, the int8 first convolution is the only difference.

    A constant 0.5 image is level 127 exactly, zero once centred: the output is then the
    bias alone, as in TF-Slim, only if the padding is the centred zero too (a 0-valued
    pad in [0, 1] space would be -1 once centred and move the last row and column)."""
    module = modules[name]
    engine = mobilevec.create(name, weights=WEIGHTS[name], backend="openvino",
                              precision="f32", int8_stem=True, threads=2)
    assert engine.int8_stem
    grey = np.full((2, 3, 224, 224), 0.5, np.float32)
    np.testing.assert_allclose(engine(grey), _torch(module, grey), atol=1e-4, rtol=0)
    x = np.concatenate([photos, np.zeros((1, 3, 224, 224), np.float32),
                        np.ones((1, 3, 224, 224), np.float32)])
    cosines = _cosines(engine(x), _torch(module, x))
    assert cosines.mean() > 0.9995 and cosines.min() > 0.998, cosines


@needs_native_int8
@pytest.mark.parametrize("name", [V2, V3])
def test_bf16_engine_keeps_the_vectors(modules, photos, name):
    """bf16 (with its int8 stem, the default) within cosine 0.99 of the fp32 module.

    On a CPU without bf16 instructions OpenVINO runs fp32 and the check still holds."""
    engine = mobilevec.create(name, weights=WEIGHTS[name], backend="openvino",
                              precision="bf16", threads=2)
    assert engine.int8_stem
    cosines = _cosines(engine(photos), _torch(modules[name], photos))
    assert cosines.mean() > 0.99 and cosines.min() > 0.95, cosines


# --- static shapes -------------------------------------------------------------------
def test_every_batch_size_gives_the_torch_vectors_static_or_not(modules, photos,
                                                                monkeypatch):
    """Sizes compiled static, sizes past the cap (dynamic model), uneven shards, and the
    latency path all keep the module's vectors."""
    monkeypatch.setattr(openvino_engine, "STATIC_SHAPES", 1)
    engine = mobilevec.create(V3, weights=WEIGHTS[V3], backend="openvino", threads=2,
                              streams=2)
    x = np.concatenate([photos, photos])[:10]
    reference = _torch(modules[V3], x)
    for n in (8, 10, 9, 1, 2, 8):  # static, past the cap, uneven, latency static, past cap
        np.testing.assert_allclose(engine(x[:n]), reference[:n], atol=1e-4, rtol=0,
                                   err_msg=f"batch {n}")
