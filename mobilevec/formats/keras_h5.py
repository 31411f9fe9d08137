"""Keras applications ``.h5`` weights (MobileNetV2, MobileNetV3) → TF-Slim variables.

Reads the layer-by-layer HDF5 layout that Keras 2 wrote for the official files
(``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224[_no_top].h5``,
``weights_mobilenet_v3_small_224_0.75_float[_no_top_v2].h5``; weight names end in
``:0``) and that Keras 3 writes with ``model.save("x.h5")`` (no ``:0``; weights under
``model_weights/``). Keras 3's ``.weights.h5`` format keys layers by class counters
(``conv2d_7``), not by name, so it cannot be mapped by name and is refused.

Keras layer names are translated to TF-Slim scopes (the Keras models were converted from
the TF-Slim checkpoints, layer for layer). Keras classifiers have 1000 classes: the
TF-Slim background class was dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import WeightsError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Keras 3 V3 names: "expanded_conv_3_depthwise_bn"; Keras 2 V3 names are TF-Slim scopes
# already ("expanded_conv_3/depthwise/BatchNorm"); V2 uses "block_3_depthwise_BN".
_V3_KERAS3 = [
    (r"conv(_1|_2)?", lambda m: "Conv" + (m[1] or "")),
    (r"conv(_1)?_bn", lambda m: "Conv" + (m[1] or "") + "/BatchNorm"),
    (r"logits", lambda m: "Logits/Conv2d_1c_1x1"),
    (r"expanded_conv(_\d+)?_(expand|depthwise|project)",
     lambda m: f"expanded_conv{m[1] or ''}/{m[2]}"),
    (r"expanded_conv(_\d+)?_(expand|depthwise|project)_bn",
     lambda m: f"expanded_conv{m[1] or ''}/{m[2]}/BatchNorm"),
    (r"expanded_conv(_\d+)?_squeeze_excite_conv(_1)?",
     lambda m: f"expanded_conv{m[1] or ''}/squeeze_excite/Conv{m[2] or ''}"),
]
_V3_KERAS2 = [
    (r"(Conv(?:_1|_2)?(?:/BatchNorm)?)", lambda m: m[1]),
    (r"Logits", lambda m: "Logits/Conv2d_1c_1x1"),
    (r"(expanded_conv(?:_\d+)?/(?:expand|depthwise|project)(?:/BatchNorm)?)", lambda m: m[1]),
    (r"(expanded_conv(?:_\d+)?/squeeze_excite/Conv(?:_1)?)", lambda m: m[1]),
]
_V2 = [
    (r"Conv1", lambda m: "Conv"),
    (r"bn_Conv1", lambda m: "Conv/BatchNorm"),
    (r"Conv_1", lambda m: "Conv_1"),
    (r"Conv_1_bn", lambda m: "Conv_1/BatchNorm"),
    (r"predictions", lambda m: "Logits/Conv2d_1c_1x1"),
    (r"expanded_conv_(depthwise|project)", lambda m: f"expanded_conv/{m[1]}"),
    (r"expanded_conv_(depthwise|project)_BN", lambda m: f"expanded_conv/{m[1]}/BatchNorm"),
    (r"block_(\d+)_(expand|depthwise|project)", lambda m: f"expanded_conv_{m[1]}/{m[2]}"),
    (r"block_(\d+)_(expand|depthwise|project)_BN",
     lambda m: f"expanded_conv_{m[1]}/{m[2]}/BatchNorm"),
]
_WEIGHT_NAMES = {"kernel": "weights", "depthwise_kernel": "depthwise_weights", "bias": "biases",
                 "gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean",
                 "moving_variance": "moving_variance"}


def tf_weight_name(scope: str, keras_weight: str) -> str:
    """TF-Slim variable name of a Keras weight (``kernel``, ``gamma``, ...) in ``scope``."""
    if scope.endswith("/depthwise") and keras_weight == "kernel":
        return "depthwise_weights"  # Keras 3 calls every kernel "kernel"
    return _WEIGHT_NAMES[keras_weight]


def is_keras_h5(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(8) == HDF5_MAGIC


def keras_layer_scope(layer: str, root_scope: str) -> str | None:
    """TF-Slim scope (under ``root_scope``) of a Keras MobileNet layer name, or None."""
    return _translate(layer, _V2 if root_scope == "MobilenetV2" else _V3_KERAS3 + _V3_KERAS2)


def _translate(layer: str, rules) -> str | None:
    for pattern, build in rules:
        m = re.fullmatch(pattern, layer)
        if m:
            return build(m)
    return None


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """TF-Slim variables (``MobilenetV2/...`` or ``MobilenetV3/...``) from a Keras ``.h5``."""
    import h5py

    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise WeightsError(p, f"not a readable HDF5 file ({e})") from e
    with f:
        root = f.get("model_weights", f)
        if "layer_names" not in root.attrs:
            hint = (" (Keras 3 '.weights.h5' files key layers by class counters; save with "
                    "model.save('x.h5') instead)" if "layers" in f else "")
            raise WeightsError(p, "no 'layer_names' attribute: not a Keras weights file" + hint)
        layers = [_text(n) for n in root.attrs["layer_names"]]
        if {"Conv1", "bn_Conv1"} & set(layers):
            root_scope, rules = "MobilenetV2", _V2
        else:
            root_scope, rules = "MobilenetV3", _V3_KERAS3 + _V3_KERAS2
        variables: dict[str, np.ndarray] = {}
        for layer in layers:
            group = root[layer]
            weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
            if not weight_names:
                continue  # activations, pads, pools: no weights
            scope = _translate(layer, rules)
            if scope is None:
                raise WeightsError(p, f"Keras layer {layer!r} has weights but no TF-Slim "
                                   f"counterpart in a {root_scope}", variable=layer)
            for weight in weight_names:
                short = weight.split("/")[-1].removesuffix(":0")
                if short not in _WEIGHT_NAMES:
                    raise WeightsError(p, f"unexpected weight {short!r}", variable=weight)
                try:
                    array = np.asarray(group[weight][()])
                except (KeyError, OSError) as e:
                    raise WeightsError(p, f"unreadable dataset ({e})", variable=weight) from e
                if layer == "predictions":  # Dense [D, K] ≡ 1×1 conv [1, 1, D, K]
                    array = array.reshape(1, 1, *array.shape) if array.ndim == 2 else array
                variables[f"{root_scope}/{scope}/{tf_weight_name(scope, short)}"] = array
    return variables
