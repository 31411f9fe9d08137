"""Keras ``.h5`` reader against files written by the real Keras 2 (``tf_keras``) writer.

The official Keras applications MobileNet files were written by Keras 2: weight names end
in ``:0`` and MobileNetV3 layers carry TF-Slim-like names (``expanded_conv_3/project``).
The fixtures were written by tests/fixtures/make_keras2_fixtures.py with ``tf_keras``; each
weight holds ``fixture_array(<Keras weight name without ':0'>, shape)``, recomputed here
without TensorFlow from an independent TF-Slim -> Keras 2 name table.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.formats.keras_h5 import read_keras_h5
from mobilevec.models.names import torch_to_tf, variable_names

FIXTURES = Path(__file__).parent / "fixtures"
V2_FILE = FIXTURES / "keras2_mobilenet_v2_035_no_top.h5"
V3_FILE = FIXTURES / "keras2_mobilenet_v3_small_075_no_top.h5"

CASES = [
    # (fixture, mobilevec model, TF-Slim scopes a no_top file lacks)
    (V2_FILE, "mobilenet_v2_035_224", ()),
    (V3_FILE, "mobilenet_v3_small_075_224", ("Conv_2",)),
]
IDS = ["v2_035", "v3_small_075"]

_KERAS_WEIGHT = {"weights": "kernel", "depthwise_weights": "depthwise_kernel", "biases": "bias"}


def _load_fixture_values():
    spec = importlib.util.spec_from_file_location("fixture_values", FIXTURES / "fixture_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fv = _load_fixture_values()


def _v2_keras_layer(scope: str) -> str:
    """Keras MobileNetV2 layer name of a TF-Slim scope (``expanded_conv_3/expand/BatchNorm``
    -> ``block_3_expand_BN``), written out independently of the reader's rules."""
    bn = scope.endswith("/BatchNorm")
    base = scope.removesuffix("/BatchNorm")
    if base == "Conv":
        return "bn_Conv1" if bn else "Conv1"
    if base == "Conv_1":
        return "Conv_1_bn" if bn else "Conv_1"
    m = re.fullmatch(r"expanded_conv(?:_(\d+))?/(expand|depthwise|project)", base)
    assert m, scope
    layer = f"block_{m[1]}_{m[2]}" if m[1] else f"expanded_conv_{m[2]}"
    return layer + ("_BN" if bn else "")


def keras2_weight_name(tf_name: str) -> str:
    """The Keras 2 weight name (without ``:0``) that holds TF-Slim variable ``tf_name``."""
    root, rest = tf_name.split("/", 1)
    scope, var = rest.rsplit("/", 1)
    layer = _v2_keras_layer(scope) if root == "MobilenetV2" else scope
    return f"{layer}/{_KERAS_WEIGHT.get(var, var)}"


def expected_names(model_name: str, lacking: tuple[str, ...]) -> dict[str, object]:
    """TF-Slim name -> VariableName of the mobilevec model, minus what no_top files lack."""
    model = mobilevec.create(model_name)
    root = model.config.spec.root_scope
    skip = tuple(f"{root}/{s}/" for s in lacking)
    return {v.tf_name: v for v in variable_names(model) if not v.tf_name.startswith(skip)}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    path, model_name, lacking = request.param
    return path, model_name, lacking, read_keras_h5(path)


def test_written_by_keras2_legacy_layout():
    for path in (V2_FILE, V3_FILE):
        assert path.stat().st_size < 3_000_000
        with h5py.File(path, "r") as f:
            assert "model_weights" not in f  # save_weights: layer groups at the root
            assert str(f.attrs["keras_version"]).startswith("2.")
            layers = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
            weights = [w.decode() if isinstance(w, bytes) else w
                       for layer in layers for w in f[layer].attrs.get("weight_names", [])]
            assert weights and all(w.endswith(":0") for w in weights)
    with h5py.File(V3_FILE, "r") as f:
        layers = {n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]}
    # The Keras 2 V3 naming the reader's Keras-2 rules rely on (Keras 3 says "conv_bn").
    assert {"Conv", "Conv/BatchNorm", "expanded_conv/depthwise",
            "expanded_conv/squeeze_excite/Conv", "expanded_conv_3/project/BatchNorm",
            "Conv_1", "Conv_1/BatchNorm"} <= layers


def test_names_are_the_model_variables_minus_no_top(case):
    _, model_name, lacking, variables = case
    assert set(variables) == set(expected_names(model_name, lacking))


def test_values_bit_identical(case):
    _, _, _, variables = case
    for tf_name, array in variables.items():
        expected = fv.fixture_array(keras2_weight_name(tf_name), array.shape)
        assert array.dtype == np.float32, tf_name
        assert np.array_equal(array, expected), tf_name


def test_shapes_match_the_model(case):
    _, model_name, lacking, variables = case
    state = mobilevec.create(model_name).state_dict()
    for tf_name, v in expected_names(model_name, lacking).items():
        tf_shape = torch_to_tf(state[v.torch_key].numpy(), v.layout).shape
        assert variables[tf_name].shape == tf_shape, tf_name


@pytest.mark.parametrize("tf_name,shape", [
    ("MobilenetV3/expanded_conv_3/squeeze_excite/Conv_1/biases", None),
    ("MobilenetV3/expanded_conv/depthwise/depthwise_weights", (3, 3, 16, 1)),
    ("MobilenetV3/expanded_conv_3/project/BatchNorm/moving_variance", None),
    ("MobilenetV3/Conv_1/BatchNorm/gamma", None),
])
def test_v3_named_examples(tf_name, shape):
    variables = read_keras_h5(V3_FILE)
    array = variables[tf_name]
    if shape is not None:
        assert array.shape == shape
    assert np.array_equal(array, fv.fixture_array(keras2_weight_name(tf_name), array.shape))
    if tf_name.endswith("moving_variance"):
        assert array.min() >= 0.5


@pytest.mark.parametrize("tf_name,keras_name", [
    ("MobilenetV2/expanded_conv_16/project/BatchNorm/moving_mean",
     "block_16_project_BN/moving_mean"),
    ("MobilenetV2/Conv/weights", "Conv1/kernel"),
    ("MobilenetV2/Conv/BatchNorm/beta", "bn_Conv1/beta"),
    ("MobilenetV2/expanded_conv/depthwise/depthwise_weights",
     "expanded_conv_depthwise/depthwise_kernel"),
    ("MobilenetV2/Conv_1/BatchNorm/moving_variance", "Conv_1_bn/moving_variance"),
])
def test_v2_named_examples(tf_name, keras_name):
    assert keras2_weight_name(tf_name) == keras_name
    with h5py.File(V2_FILE, "r") as f:
        stored = np.asarray(f[keras_name.split("/")[0]][keras_name + ":0"][()])
    array = read_keras_h5(V2_FILE)[tf_name]
    assert np.array_equal(array, stored)
    assert np.array_equal(array, fv.fixture_array(keras_name, array.shape))


def test_read_weights_detects_keras_h5():
    for path in (V2_FILE, V3_FILE):
        assert mobilevec.read_weights(path).format == "keras_h5"


def test_v2_fixture_loads_and_runs():
    model = mobilevec.create("mobilenet_v2_035_224", weights=V2_FILE)
    assert model.classifier is None  # no_top: no logits
    state = model.state_dict()
    for v in variable_names(model):
        loaded = torch_to_tf(state[v.torch_key].numpy(), v.layout)
        assert np.array_equal(loaded, fv.fixture_array(keras2_weight_name(v.tf_name),
                                                       loaded.shape)), v.tf_name
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model(x)
    assert features.shape == (2, 1280)
    assert torch.isfinite(features).all()
