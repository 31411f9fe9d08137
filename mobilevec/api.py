"""Public entry points: build a model from a name and (optionally) weights; save weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WeightsError
from .formats.detect import Weights, read_weights
from .formats.safetensors_format import write_safetensors
from .models.mobilenet import MobileNet
from .models.names import load_tf_variables, logits_classes, to_tf_variables
from .models.registry import get_config

if TYPE_CHECKING:
    from .engines import Engine

log = logging.getLogger(__name__)


def create(name: str, weights: str | Path | Weights | None = None, *, trainable: bool = True,
           batch_norm_momentum: float | None = None, ema: bool = True, backend: str = "torch",
           **engine_options) -> MobileNet | Engine:
    """Build model ``name`` (see :func:`list_models`) in eval mode.

    ``weights``: any supported artifact, file or directory, recognised by content (TF
    checkpoint, SavedModel, Keras ``.h5``, ``.tflite``, ``.safetensors``, ``.npy``
    directory); ``None`` gives random initialisation. A classifier is attached when the
    weights carry a complete ``Logits`` layer. ``ema`` selects a TF checkpoint's moving
    averages (TF Hub's choice). ``batch_norm_momentum`` uses TF's convention (decay).
    ``trainable=False`` freezes the weights and keeps BatchNorm in inference mode, like
    ``hub.KerasLayer(trainable=False)``.

    The returned module maps float32 NCHW RGB in [0, 1] to ``(N, num_features)``.

    ``backend`` other than "torch" ("torch-fused", "onnxruntime", "openvino", "auto")
    returns an inference-only engine with the same call contract instead
    (:func:`mobilevec.engines.create_engine`, which takes ``engine_options``).
    """
    if backend != "torch":
        from .engines import create_engine

        return create_engine(name, weights, backend, ema=ema, **engine_options)
    if engine_options:
        raise TypeError(f"options {sorted(engine_options)} apply only to engine backends")
    config = get_config(name)
    model = MobileNet(config)
    if weights is not None:
        loaded = weights if isinstance(weights, Weights) else read_weights(weights, ema=ema)
        root = config.spec.root_scope
        if loaded.root_scope not in (None, root):
            raise WeightsError(loaded.path, f"holds {loaded.root_scope} variables but {name} "
                               f"is a {root}; pick a matching model name")
        classes = logits_classes(loaded.variables, root)
        if classes:
            model.set_num_classes(classes, background_class=classes == 1001)
        load_tf_variables(model, loaded.variables, loaded.path)
    if batch_norm_momentum is not None:
        model.set_batch_norm_momentum(batch_norm_momentum)
    model.trainable = trainable
    return model.eval()


def save(model: MobileNet, path: str | Path) -> Path:
    """Write ``model``'s weights as mobilevec safetensors (TF-Slim names, TF layout)."""
    metadata = {"model": model.config.name}
    if model.classifier is not None:
        metadata["num_classes"] = str(model.classifier.out_features)
    return write_safetensors(to_tf_variables(model), path, metadata)

