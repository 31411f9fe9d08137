"""``mobilevec.keras.KerasLayer``: native Keras 3 layers against the torch module and Keras' rules.

References: the torch module (verified against Keras applications and LiteRT elsewhere) for
the outputs; Keras' documented BatchNormalization update rule, computed by hand from the
torch module's first convolution, for fine-tuning. Runs on the torch backend in-process and
on JAX in a subprocess when jax is installed. Handles are local files, or TF Hub handles
served from a cache populated here with the network off.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

keras = pytest.importorskip("keras", reason="keras (test extra) is not installed")
if keras.backend.backend() != "torch":
    pytest.skip(f"in-process Keras tests need KERAS_BACKEND=torch, got "
                f"{keras.backend.backend()}", allow_module_level=True)

import mobilevec  # noqa: E402
import mobilevec.hub  # noqa: E402
from mobilevec import keras as hub  # noqa: E402
from mobilevec.data.images import load_image  # noqa: E402
from mobilevec.errors import MobilevecError  # noqa: E402
from mobilevec.hub import cache  # noqa: E402

# Keras' torch backend converts tensors with np.array(x), which numpy 2 flags; not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

TOLERANCE = 1e-4
SEED_CARD_V2 = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/2"
V2_CLASSIFICATION = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/classification/5"


# --- helpers -----------------------------------------------------------------------------

def nhwc(x_nchw: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x_nchw).transpose(0, 2, 3, 1), dtype=np.float32)


def torch_features(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def keras_output(layer, x_nhwc: np.ndarray, training: bool = False) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(x_nhwc, training=training))


def backbone_state(layer) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]


def first_batch_norm(layer):
    conv = layer.blocks[0]  # the stem: MobilenetV*/Conv
    assert conv.scope.endswith("/Conv")
    return conv.bn


@pytest.fixture(scope="module")
def photos(data_dir) -> np.ndarray:
    """Eight real photos at 224², NHWC float32 in [0, 1] (mobilevec's documented decode)."""
    files = sorted((data_dir / "imagenet-samples").glob("*.JPEG"))[::31][:8]
    return nhwc(torch.stack([load_image(f) for f in files]))


@pytest.fixture(scope="module")
def artifacts(v2_npy, v3_tflite) -> dict[str, Path]:
    return {"mobilenet_v2_100_224": v2_npy, "mobilenet_v3_small_075_224": v3_tflite}


@pytest.fixture(scope="module")
def torch_modules(artifacts) -> dict:
    return {name: mobilevec.hub.load(path) for name, path in artifacts.items()}


@pytest.fixture
def offline_cache(cache_root, monkeypatch) -> Path:
    """An empty mobilevec cache (conftest's) with downloads forbidden."""
    monkeypatch.setenv("MOBILEVEC_OFFLINE", "1")
    return cache_root


# --- outputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobilenet_v2_100_224", "mobilenet_v3_small_075_224"])
def test_outputs_equal_the_torch_module_on_photos_random_and_odd_sized_inputs(
        name, artifacts, torch_modules, photos):
    layer = hub.KerasLayer(str(artifacts[name]))
    assert layer.model_name == name
    net = torch_modules[name]
    rng = np.random.default_rng(3)
    # 193 × 161: odd sizes, so every stride-2 'SAME' conv pads asymmetrically and differently
    # per axis; a symmetric or mis-sided pad moves the features by far more than 1e-4.
    for x in (photos[:4], rng.random((2, 224, 224, 3), dtype=np.float32),
              rng.random((2, 193, 161, 3), dtype=np.float32)):
        got, want = keras_output(layer, x), torch_features(net, x)
        assert got.shape == (len(x), net.num_features)
        assert np.abs(got - want).max() <= TOLERANCE
        assert np.abs(want[0] - want[1]).max() > 1e-2  # the inputs give different vectors


def test_classification_handle_gives_the_torch_module_logits(v2_npy, offline_cache, tmp_path,
                                                             photos):
    net = mobilevec.create("mobilenet_v2_100_224", weights=v2_npy)
    torch.manual_seed(0)
    net.set_num_classes(1001, background_class=True)  # the .npy set carries no Logits kernel
    mobilevec.save(net, tmp_path / "v2_with_logits.safetensors")
    cache.import_file(tmp_path / "v2_with_logits.safetensors", V2_CLASSIFICATION)

    layer = hub.KerasLayer(V2_CLASSIFICATION, output_shape=[1001])
    with torch.no_grad():
        want = net.logits(torch.from_numpy(photos[:3]).permute(0, 3, 1, 2)).numpy()
    got = keras_output(layer, photos[:3])
    assert got.shape == (3, 1001)
    assert np.abs(got - want).max() <= TOLERANCE


# --- the seed card -----------------------------------------------------------------------

def test_seed_card_snippet_runs_as_written_from_an_offline_cache(
        offline_cache, tmp_path, torch_modules, photos):
    v2 = torch_modules["mobilenet_v2_100_224"]
    mobilevec.save(v2, tmp_path / "v2.safetensors")
    cache.import_file(tmp_path / "v2.safetensors", SEED_CARD_V2)
    num_classes = 5

    # The seed card's code, verbatim apart from the import line.
    m = keras.Sequential([hub.KerasLayer("https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/2", output_shape=[1280], trainable=False), keras.layers.Dense(num_classes, activation="softmax")])  # noqa: E501
    m.build([None, 224, 224, 3])

    assert m.output_shape == (None, num_classes)
    probabilities = m.predict(photos[:2], verbose=0)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    features = keras_output(m.layers[0], photos[:2])
    assert np.abs(features - torch_features(v2, photos[:2])).max() <= TOLERANCE


# --- training ----------------------------------------------------------------------------

def classifier(layer, num_classes: int = 5, learning_rate: float = 0.05):
    model = keras.Sequential([layer, keras.layers.Dense(num_classes, activation="softmax")])
    model.compile(keras.optimizers.SGD(learning_rate), "sparse_categorical_crossentropy")
    return model


def test_frozen_fit_trains_only_the_head_and_keeps_batch_norm_in_inference_mode(
        artifacts, photos):
    layer = hub.KerasLayer(str(artifacts["mobilenet_v3_small_075_224"]), trainable=False)
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) > 100
    model = classifier(layer)
    model.build((None, 224, 224, 3))
    head = keras.ops.convert_to_numpy(model.layers[1].kernel).copy()
    before = backbone_state(layer)

    model.fit(photos[:4], np.arange(4), epochs=1, batch_size=2, verbose=0)

    after = backbone_state(layer)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not np.allclose(keras.ops.convert_to_numpy(model.layers[1].kernel), head)
    # training=True must not switch BN to batch statistics (hub.KerasLayer's rule).
    assert np.array_equal(keras_output(layer, photos[:4], training=True),
                          keras_output(layer, photos[:4], training=False))


def test_trainable_fit_updates_batch_norm_moving_averages_at_the_given_momentum(
        artifacts, torch_modules, photos):
    momentum = 0.9
    layer = hub.KerasLayer(str(artifacts["mobilenet_v3_small_075_224"]), trainable=True,
                           arguments={"batch_norm_momentum": momentum})
    bn = first_batch_norm(layer)
    old_mean = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    old_var = keras.ops.convert_to_numpy(bn.moving_variance).copy()
    kernel = keras.ops.convert_to_numpy(layer.blocks[0].conv.kernel).copy()
    batch = photos[:4]

    # One step: the batch statistics come from the weights before the update, so the
    # moving averages after it follow by hand from the torch module's stem convolution.
    classifier(layer).fit(batch, np.arange(4), epochs=1, batch_size=4, shuffle=False,
                          verbose=0)

    net = torch_modules["mobilenet_v3_small_075_224"]
    with torch.no_grad():
        conv = net.layers["Conv"].conv(torch.from_numpy(batch).permute(0, 3, 1, 2) * 2 - 1)
    conv = conv.double().numpy()
    batch_mean, batch_var = conv.mean((0, 2, 3)), conv.var((0, 2, 3))  # Keras: biased var
    want_mean = momentum * old_mean + (1 - momentum) * batch_mean
    want_var = momentum * old_var + (1 - momentum) * batch_var
    new_mean = keras.ops.convert_to_numpy(bn.moving_mean)
    new_var = keras.ops.convert_to_numpy(bn.moving_variance)
    assert np.abs(new_mean - old_mean).max() > 1e-2  # the step moved them visibly
    np.testing.assert_allclose(new_mean, want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_var, want_var, rtol=1e-4, atol=1e-5)
    assert not np.allclose(keras.ops.convert_to_numpy(layer.blocks[0].conv.kernel), kernel)


def test_batch_norm_momentum_defaults_to_the_model_card_value(artifacts):
    for name, momentum in (("mobilenet_v2_100_224", 0.997), ("mobilenet_v3_small_075_224", 0.99)):
        layer = hub.KerasLayer(str(artifacts[name]), trainable=True)
        momenta = {bn.momentum for bn in layer._flatten_layers()
                   if isinstance(bn, keras.layers.BatchNormalization)}
        assert momenta == {momentum}, name


# --- saving --------------------------------------------------------------------------------

def test_saved_keras_model_round_trips_without_the_handle_or_network(
        artifacts, photos, tmp_path, offline_cache):
    handle = tmp_path / "v3.tflite"
    shutil.copy(artifacts["mobilenet_v3_small_075_224"], handle)
    layer = hub.KerasLayer(str(handle), trainable=True, arguments={"batch_norm_momentum": 0.95})
    model = classifier(layer)
    # Fine-tune one step so the saved weights are not the artifact's any more.
    model.fit(photos[:4], np.arange(4), epochs=1, batch_size=4, verbose=0)
    want = model.predict(photos[4:], verbose=0)
    model.save(tmp_path / "model.keras")
    handle.unlink()  # the loaded model may not read the artifact, nor download anything

    loaded = keras.models.load_model(tmp_path / "model.keras")

    np.testing.assert_allclose(loaded.predict(photos[4:], verbose=0), want, rtol=1e-6,
                               atol=1e-7)
    restored = loaded.layers[0]
    assert isinstance(restored, hub.KerasLayer)
    assert restored.trainable and restored.arguments == {"batch_norm_momentum": 0.95}
    assert first_batch_norm(restored).momentum == 0.95
    assert restored.get_config()["handle"] == str(handle)


# --- bad input -------------------------------------------------------------------------------

def test_wrong_output_shape_names_the_model_and_its_width(artifacts):
    with pytest.raises(ValueError, match=r"output_shape=\[1280\].*mobilenet_v3_small_075_224.*"
                                         r"\[1024\]"):
        hub.KerasLayer(str(artifacts["mobilenet_v3_small_075_224"]), output_shape=[1280])


def test_unknown_arguments_and_missing_handles_are_refused(artifacts, tmp_path):
    with pytest.raises(MobilevecError, match="unknown arguments"):
        hub.KerasLayer(str(artifacts["mobilenet_v3_small_075_224"]), arguments={"depth": 2})
    with pytest.raises(MobilevecError, match="not a file, directory, URL or handle"):
        hub.KerasLayer(str(tmp_path / "missing.tflite"))


def test_inputs_outside_the_hub_contract_are_refused_with_the_reason(artifacts, photos):
    from mobilevec.errors import InputError

    layer = hub.KerasLayer(str(artifacts["mobilenet_v3_small_075_224"]))
    pixels = np.round(photos[:2] * 255)
    with pytest.raises(InputError, match="uint8.*divide|x / 255"):
        layer(pixels.astype(np.uint8))
    with pytest.raises(InputError, match=r"\[0, 255\]: divide by 255"):
        layer(pixels.astype(np.float32))  # the most common first try, as floats
    with pytest.raises(InputError, match="scaled to \\[-1, 1\\]"):
        layer(photos[:2] * 2 - 1)
    with pytest.raises(InputError, match="NCHW"):
        layer(np.ascontiguousarray(photos[:2].transpose(0, 3, 1, 2)))
    with pytest.raises(InputError, match="without the batch dimension"):
        layer(photos[0])
    bad = photos[:2].copy()
    bad[1, 5, 5, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        layer(bad)
    # and in a functional model, the same message at predict time
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(InputError, match="divide by 255"):
        model.predict(pixels.astype(np.float32), verbose=0)
    assert model.predict(photos[:2], verbose=0).shape == (2, 1024)  # [0, 1] still runs


# --- packaging and other backends -----------------------------------------------------------

def test_importing_mobilevec_does_not_import_keras():
    code = "import sys, mobilevec, mobilevec.hub; print('keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


JAX_CHECK = """
import json, sys
import numpy as np, torch, keras
import mobilevec.hub
from mobilevec import keras as hub
path = sys.argv[1]
layer = hub.KerasLayer(path)
x = np.random.default_rng(5).random((2, 97, 115, 3), dtype=np.float32)
got = keras.Sequential([layer]).predict(x, verbose=0)
with torch.no_grad():
    want = mobilevec.hub.load(path)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
print(json.dumps({"backend": keras.backend.backend(), "shape": list(got.shape),
                  "max_abs": float(np.abs(np.asarray(got) - want).max()),
                  "spread": float(np.abs(want[0] - want[1]).max())}))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_layer_on_the_jax_backend_equals_the_torch_module_at_odd_sizes(artifacts):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK, str(artifacts["mobilenet_v3_small_075_224"])],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["shape"] == [2, 1024]
    assert report["max_abs"] <= TOLERANCE and report["spread"] > 1e-2
