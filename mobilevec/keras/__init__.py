"""Keras 3 layers for the TF Hub MobileNet modules: ``from mobilevec import keras as hub``.

``hub.KerasLayer(handle, trainable=False, arguments=None, output_shape=None)`` behaves like
``tensorflow_hub.KerasLayer`` for the MobileNet V2/V3 feature-vector modules, as native
Keras 3 layers (any backend; set ``KERAS_BACKEND`` before importing keras). Importing this
package imports keras; ``import mobilevec`` alone never does.
"""

from .hub_layer import KerasLayer

__all__ = ["KerasLayer"]
