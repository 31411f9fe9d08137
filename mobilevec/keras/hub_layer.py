"""``KerasLayer``: a TF Hub MobileNet module as a native Keras 3 layer, on any Keras backend.

The handle is resolved like :func:`mobilevec.hub.load` does (cache, offline mode, archives);
the layer is then *rebuilt* from the architecture table with Keras' own Conv2D,
DepthwiseConv2D and BatchNormalization (:mod:`mobilevec.keras.blocks`) and filled with the
torch module's TF-Slim variables. Nothing of torch runs inside the layer, so it works with
the JAX, TensorFlow and torch backends alike.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from keras import ops

from ..errors import InputError
from ..hub import loader as hub
from ..models.inputs import check_dtype, check_range
from ..models.names import LOGITS_SCOPE, to_tf_variables
from ..models.registry import get_config
from .blocks import build_blocks, set_tf_variables

log = logging.getLogger(__name__)
MIN_SIZE = 32


def _concrete(x) -> bool:
    """Whether ``x`` holds values (an eager call), not a symbol being traced."""
    if isinstance(x, np.ndarray):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True  # the torch and numpy backends run eagerly


@keras.saving.register_keras_serializable(package="mobilevec")
class KerasLayer(keras.layers.Layer):
    """``hub.KerasLayer`` for the MobileNet feature-vector (and classification) modules.

    ``KerasLayer(handle, trainable=False, arguments=None, output_shape=None, **kwargs)``:

    - ``handle``: a TF Hub / Kaggle handle, the URL of an artifact, or a local artifact
      (file or directory), resolved through mobilevec's cache (:func:`mobilevec.hub.load`).
    - input: float32 NHWC RGB in [0, 1] (the hub image contract), any H, W ≥ 32; scaled to
      [-1, 1] inside. Other inputs raise :class:`~mobilevec.errors.InputError` (the rules of
      :mod:`mobilevec.models.inputs`): integer dtypes (uint8 pixels: divide by 255), other
      layouts, and, on eager calls (where the values exist: the torch backend, eager TF),
      values outside [0, 1] or not finite. Under ``tf.function`` or ``jax.jit`` only the
      shape and dtype can be checked.
      Output: ``(batch, num_features)`` (logits for classification modules).
    - ``trainable=False`` (the default, as in TF Hub): weights frozen and BatchNorm in
      inference mode even under ``fit``. ``trainable=True``: everything trains and
      BatchNorm uses batch statistics, updating its moving averages with decay
      ``arguments["batch_norm_momentum"]`` (TF's and Keras' convention; the model's
      default otherwise: 0.997 for V2, 0.99 for V3).
    - ``output_shape``: checked against the module's output width when given.
    - ``model``: a mobilevec model name overriding the one the handle implies.
    - ``**kwargs`` go to :class:`keras.layers.Layer` (``name``, ``dtype``).

    The config stores the handle, the model name and the output width, never the weights:
    ``keras.models.load_model`` rebuilds the architecture without touching the handle (no
    network, no cache) and restores the weights from the ``.keras`` file.
    """

    def __init__(self, handle: str, trainable: bool = False,
                 arguments: dict[str, Any] | None = None,
                 output_shape: list[int] | tuple[int, ...] | None = None, *,
                 model: str | None = None, **kwargs):
        # from_config passes these two; users never do (the handle decides the classes).
        restoring = kwargs.pop("_restoring", False)
        num_classes = kwargs.pop("num_classes", None) if restoring else None
        super().__init__(trainable=trainable, **kwargs)
        self.handle = str(handle)
        self.arguments = dict(arguments or {})
        if restoring:
            # from_config: the architecture from the stored model name; the weights
            # follow from the saved file (Keras' load_own_variables).
            config, variables = get_config(model), None
        else:
            net = hub.load(self.handle, trainable=trainable, arguments=self.arguments,
                           model=model)
            config, variables = net.config, to_tf_variables(net)
            num_classes = net.classifier.out_features if net.output == "logits" else None
        self.model_name = config.name
        self.num_classes = num_classes
        momentum = self.arguments.get("batch_norm_momentum", config.batch_norm_momentum)
        self.blocks = build_blocks(config.resolved_layers(), config.spec.root_scope,
                                   float(momentum), dtype=self.dtype_policy)
        self.classifier = self._make_classifier(num_classes, config.num_features)
        self.output_width = num_classes or config.num_features
        if output_shape is not None and tuple(output_shape) != (self.output_width,):
            raise ValueError(f"{self.handle}: output_shape={list(output_shape)} does not fit "
                             f"{self.model_name}, whose output is [{self.output_width}]")
        if variables is not None:
            set_tf_variables(self.blocks, variables)
            if self.classifier is not None:
                head = f"{config.spec.root_scope}/{LOGITS_SCOPE}"
                self.classifier.set_weights([variables[f"{head}/weights"],
                                             variables[f"{head}/biases"]])
        # Keras propagates trainable to the sublayers: frozen BatchNorm runs in inference mode.
        self.trainable = trainable
        self.built = True

    def _make_classifier(self, num_classes: int | None, num_features: int):
        """The 1×1 ``Logits/Conv2d_1c_1x1`` conv of classification modules (None otherwise)."""
        if not num_classes:
            return None
        conv = keras.layers.Conv2D(num_classes, 1, data_format="channels_last",
                                   name=LOGITS_SCOPE.replace("/", "_"),
                                   kernel_initializer="zeros", dtype=self.dtype_policy)
        conv.build((None, 1, 1, num_features))
        return conv

    def build(self, input_shape=None) -> None:
        # Every weight exists from __init__ on (its shape does not depend on H and W).
        if input_shape is not None:
            self._check_shape(tuple(input_shape))
        self.built = True

    def _wanted(self) -> str:
        return (f"KerasLayer({self.handle}) takes float NHWC (N, H, W, 3) RGB in [0, 1], "
                f"H, W >= {MIN_SIZE}")

    def _check_shape(self, shape: tuple) -> None:
        got = f"{self._wanted()}; got shape {shape}"
        if len(shape) != 4:
            raise InputError(got + (", one image without the batch dimension: add one"
                                    if len(shape) == 3 else ""))
        if shape[-1] != 3:
            raise InputError(got + (", which is NCHW: the hub layout is channels last"
                                    if shape[1] == 3 else f", with {shape[-1]} channels"))
        if any(d is not None and int(d) < MIN_SIZE for d in shape[1:3]):
            raise InputError(got)

    def _check_input(self, inputs) -> None:
        self._check_shape(tuple(inputs.shape))
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        check_dtype(dtype, "float" in dtype, self._wanted())
        if _concrete(inputs) and int(np.prod(inputs.shape)) > 0:
            check_range(float(ops.convert_to_numpy(ops.min(inputs))),
                        float(ops.convert_to_numpy(ops.max(inputs))), self._wanted())

    def call(self, inputs, training=None):
        self._check_input(inputs)
        x = ops.cast(inputs, self.compute_dtype) * 2.0 - 1.0  # hub [0, 1] → TF-Slim [-1, 1]
        for block in self.blocks:
            x = block(x, training=training)
        if self.classifier is not None:
            x = self.classifier(x)
        return ops.reshape(x, (-1, self.output_width))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_width)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(handle=self.handle, arguments=self.arguments,
                      output_shape=[self.output_width], model=self.model_name,
                      num_classes=self.num_classes)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KerasLayer:
        return cls(**config, _restoring=True)

