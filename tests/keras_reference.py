"""Keras 3 applications (torch backend, no TensorFlow) as independent reference models."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from calibrated import calibrated_variables, structured_images  # noqa: E402, F401

keras = pytest.importorskip("keras", reason="keras (test extra) is not installed")
if keras.backend.backend() != "torch":
    pytest.skip(f"Keras reference tests need KERAS_BACKEND=torch, got {keras.backend.backend()}",
                allow_module_level=True)


def build(family: str, alpha: float, size: int, minimalistic: bool = False):
    """A Keras application with random weights, returning (features, logits) for [-1,1] NHWC."""
    kwargs = dict(alpha=alpha, weights=None, include_top=True, input_shape=(size, size, 3),
                  classifier_activation=None)
    if family == "v2":
        model = keras.applications.MobileNetV2(**kwargs)
    else:
        cls = keras.applications.MobileNetV3Small if family == "v3_small" \
            else keras.applications.MobileNetV3Large
        model = cls(minimalistic=minimalistic, include_preprocessing=False, **kwargs)
    head = model.get_layer("predictions" if family == "v2" else "logits")
    return model, keras.Model(model.input, [head.input, model.output])


def run(submodel, x_nchw01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed the hub contract's [0,1] NCHW images the way Keras expects them: NHWC [-1,1]."""
    x = np.transpose(x_nchw01, (0, 2, 3, 1)) * 2.0 - 1.0
    features, logits = submodel.predict(x.astype("float32"), verbose=0)
    return np.asarray(features).reshape(len(x), -1), np.asarray(logits).reshape(len(x), -1)


def set_tf_variables(model, variables: dict, root_scope: str) -> int:
    """Put TF-Slim variables into a Keras application by layer name; returns layers set."""
    from mobilevec.formats.keras_h5 import keras_layer_scope, tf_weight_name

    count = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        scope = keras_layer_scope(layer.name, root_scope)
        values = []
        for w in layer.weights:
            key = f"{root_scope}/{scope}/{tf_weight_name(scope, w.path.split('/')[-1])}"
            if key not in variables:
                break
            values.append(np.asarray(variables[key]).reshape(tuple(w.shape)))
        else:
            layer.set_weights(values)
            count += 1
    return count


def use_keras_gate(model) -> None:
    """Keras' hard-sigmoid is relu6(x + 3) / 6; TF-Slim's is relu6(x + 3) * 0.16667."""
    from mobilevec.models.layers import SqueezeExcite

    for m in model.modules():
        if isinstance(m, SqueezeExcite):
            m.gate_scale = 1.0 / 6.0
