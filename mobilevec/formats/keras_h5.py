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

import json
import os
import re
import signal
import subprocess
import sys
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


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """TF-Slim variables (``MobilenetV2/...`` or ``MobilenetV3/...``) from a Keras ``.h5``.

    The file is parsed in a child process with a time and memory limit
    (:mod:`mobilevec.formats._h5_child`); links, external storage, virtual and
    fill-value datasets are refused before any data is read.
    """
    p = Path(path)
    layers, arrays, keras3 = read_raw_sandboxed(p)
    return variables_from_raw(p, layers, arrays, keras3)


def variables_from_raw(p: Path, layers: list[tuple[str, list[str]]], arrays: dict,
                       keras3_weights_file: bool = False) -> dict[str, np.ndarray]:
    """Map the raw datasets of a Keras ``.h5`` (see :func:`read_raw_sandboxed`) to
    TF-Slim variables."""
    if not layers:
        hint = (" (Keras 3 '.weights.h5' files key layers by class counters; save with "
                "model.save('x.h5') instead)" if keras3_weights_file else "")
        raise WeightsError(p, "no 'layer_names' attribute: not a Keras weights file" + hint)
    names = {layer for layer, _ in layers}
    if {"Conv1", "bn_Conv1"} & names:
        root_scope, rules = "MobilenetV2", _V2
    else:
        root_scope, rules = "MobilenetV3", _V3_KERAS3 + _V3_KERAS2
    variables: dict[str, np.ndarray] = {}
    for i, (layer, weight_names) in enumerate(layers):
        if not weight_names:
            continue  # activations, pads, pools: no weights
        scope = _translate(layer, rules)
        if scope is None:
            raise WeightsError(p, f"Keras layer {layer!r} has weights but no TF-Slim "
                               f"counterpart in a {root_scope}", variable=layer)
        for j, weight in enumerate(weight_names):
            short = weight.split("/")[-1].removesuffix(":0")
            if short not in _WEIGHT_NAMES:
                raise WeightsError(p, f"unexpected weight {short!r}", variable=weight)
            array = arrays.get(f"{i}/{j}")
            if not isinstance(array, np.ndarray):
                raise WeightsError(p, "dataset missing from the reader's answer",
                                   variable=weight)
            if layer == "predictions":  # Dense [D, K] ≡ 1×1 conv [1, 1, D, K]
                array = array.reshape(1, 1, *array.shape) if array.ndim == 2 else array
            name = f"{root_scope}/{scope}/{tf_weight_name(scope, short)}"
            if name in variables:
                raise WeightsError(p, "two Keras weights map to this variable", variable=name)
            variables[name] = array
    return variables


# The child's limits: CPU seconds for the read itself (a MobileNet .h5 takes ~0.05 s), wall
# seconds for everything including interpreter start-up (a blocked read shows up here),
# and address space beyond the interpreter's own.
SANDBOX_CPU_SECONDS = 2.0
SANDBOX_WALL_SECONDS = 30.0
SANDBOX_MEMORY_BYTES = 512 << 20


def read_raw_sandboxed(path: Path) -> tuple[list[tuple[str, list[str]]], dict, bool]:
    """Run :func:`mobilevec.formats._h5_child.read_raw` on ``path`` in a child process.

    Raises :class:`WeightsError` naming the file for anything the child refused, any
    HDF5 error, a crash, or a time or memory limit reached.
    """
    from .._optional import require

    require("h5py", "h5", purpose="reading Keras .h5 weights")
    if not path.is_file():
        raise WeightsError(path, "no such file (or not a regular file)")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise WeightsError(path, f"cannot read ({e})") from e
    env = {**os.environ, "HDF5_PLUGIN_PRELOAD": "::", "HDF5_USE_FILE_LOCKING": "FALSE",
           "OMP_NUM_THREADS": "1"}
    memory = SANDBOX_MEMORY_BYTES + 2 * size
    command = [sys.executable, "-P", str(_CHILD), str(path), str(memory),
               str(SANDBOX_CPU_SECONDS)]
    try:
        done = subprocess.run(command, capture_output=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=SANDBOX_WALL_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise WeightsError(path, f"the HDF5 reader ran longer than {SANDBOX_WALL_SECONDS:.0f} "
                           "s (a crafted or corrupt file) and was stopped") from None
    except OSError as e:
        raise WeightsError(path, f"cannot start the HDF5 reader process ({e})") from e
    return _child_answer(path, done)


def _child_answer(path: Path, done: subprocess.CompletedProcess) -> tuple[list, dict, bool]:
    out = done.stdout
    if out[:2] == b"ER":
        try:
            error = json.loads(out[2:])
            message, variable = str(error["message"]), error.get("variable")
        except (ValueError, KeyError, TypeError):
            message, variable = "the HDF5 reader gave an unreadable answer", None
        raise WeightsError(path, message, None if variable is None else str(variable))
    if out[:2] != b"OK" or done.returncode != 0:
        raise WeightsError(path, f"the HDF5 reader stopped ({_exit_reason(done.returncode)})"
                           f"{_stderr_tail(done.stderr)}; a crafted or corrupt file")
    from safetensors.numpy import load

    try:
        arrays = load(bytes(out[2:]))
        meta = json.loads(_safetensors_metadata(out[2:]).get("layers", "[]"))
        layers = [(str(layer), [str(w) for w in weights]) for layer, weights in meta]
        keras3 = _safetensors_metadata(out[2:]).get("keras3") == "True"
    except Exception as e:  # the answer is checked as the untrusted data it derives from
        raise WeightsError(path, f"the HDF5 reader gave an unreadable answer ({e})") from None
    return layers, arrays, keras3


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(bytes(blob[8:8 + length]))
    return dict(header.get("__metadata__") or {})


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    name = {signal.SIGXCPU: f"CPU limit of {SANDBOX_CPU_SECONDS:.0f} s reached",
            signal.SIGKILL: "killed", signal.SIGSEGV: "the HDF5 library crashed",
            signal.SIGABRT: "the HDF5 library aborted"}
    return name.get(-code, f"signal {-code}")


def _stderr_tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return f": {lines[-1][:300]}" if lines else ""


_CHILD = Path(__file__).with_name("_h5_child.py")
