"""The two TF Hub feature vectors from the real weights, against independent references.

V2: mobilevec from TF-Slim ``.npy`` variables vs Keras 3 MobileNetV2 holding the same
variables. V3: mobilevec from the TF Hub ``.tflite`` vs the LiteRT interpreter running it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mobilevec

TOLERANCE = 1e-4


def photos(data_dir, count: int, size: int = 224) -> np.ndarray:
    """A few real photos, resized to ``size``², as float32 NCHW in [0, 1]."""
    files = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[::25][:count]
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
              for f in files]
    return (np.stack(images).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)


def inputs(data_dir, size=224) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([photos(data_dir, 6, size),
                           rng.random((2, 3, size, size), dtype=np.float32)])


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("size", [224, 193])
def test_v2_npy_matches_keras_with_the_same_variables(v2_npy, data_dir, size):
    kr = pytest.importorskip("keras_reference")
    model = mobilevec.create("mobilenet_v2_100_224", weights=v2_npy)
    keras_model, keras_heads = kr.build("v2", 1.0, size)
    loaded = mobilevec.read_weights(v2_npy)
    assert kr.set_tf_variables(keras_model, loaded.variables, "MobilenetV2") == 104
    x = inputs(data_dir, size)
    expected, _ = kr.run(keras_heads, x)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == (len(x), 1280)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert cosine(got, expected).min() >= 0.99999
    assert got.min() >= 0.0 and got.max() <= 6.0  # mean of ReLU6 outputs


def test_v2_npy_has_no_classifier_because_the_logits_kernel_is_absent(v2_npy):
    assert mobilevec.create("mobilenet_v2_100_224", weights=v2_npy).classifier is None


def litert_features(tflite_path, x_nchw: np.ndarray) -> np.ndarray:
    """The TF Hub V3 module's own output: the LiteRT interpreter running the .tflite."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter",
                                             reason="ai-edge-litert (test extra) not installed")
    interpreter = interpreter_module.Interpreter(model_path=str(tflite_path), num_threads=2)
    (entry,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(entry["index"], [len(x_nchw), *x_nchw.shape[2:], 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def test_v3_tflite_matches_the_litert_interpreter(v3_tflite, data_dir):
    model = mobilevec.create("mobilenet_v3_small_075_224", weights=v3_tflite)
    x = inputs(data_dir)
    expected = litert_features(v3_tflite, x)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (len(x), 1024)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert cosine(got, expected).min() >= 0.99999
    assert got.min() >= -0.375 - 1e-6  # hard-swish's minimum


def test_v3_trunk_uses_every_tflite_tensor_exactly_once(v3_tflite):
    from mobilevec.models.names import variable_names

    weights = mobilevec.read_weights(v3_tflite)
    model = mobilevec.create("mobilenet_v3_small_075_224")
    expected = {v.tf_name for v in variable_names(model)}
    assert set(weights.variables) == expected
