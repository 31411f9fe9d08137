"""The public entry points that compose the layers below: a model name and weights become
the torch module (:mod:`mobilevec.models.factory`) or an inference engine running it
(:mod:`mobilevec.engines`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engines import Engine
    from .formats.detect import Weights
    from .models.mobilenet import MobileNet

TORCH = "torch"


def create(name: str, weights: str | Path | Weights | None = None, *, trainable: bool = True,
           batch_norm_momentum: float | None = None, ema: bool = True,
           backend: str | None = TORCH, **engine_options) -> MobileNet | Engine:
    """Build model ``name`` (see :func:`list_models`) in eval mode.

    ``weights``: any supported artifact, file or directory, recognised by content (TF
    checkpoint, SavedModel, Keras ``.h5``, ``.tflite``, ``.safetensors``, ``.npy``
    directory); ``None`` gives random initialisation. A classifier is attached when the
    weights carry a complete ``Logits`` layer. ``ema`` selects a TF checkpoint's moving
    averages (TF Hub's choice). ``batch_norm_momentum`` uses TF's convention (decay).
    ``trainable=False`` freezes the weights and keeps BatchNorm in inference mode, like
    ``hub.KerasLayer(trainable=False)``.

    The returned module maps float32 NCHW RGB in [0, 1] to ``(N, num_features)``.

    ``backend`` other than "torch" (or None, which means "torch") — "torch-fused",
    "onnxruntime", "openvino", "litert", "auto" — returns an inference-only engine with the
    same call contract instead (:func:`mobilevec.engines.create_engine`, which takes
    ``engine_options``).
    """
    if backend not in (None, TORCH):
        from .engines import create_engine

        return create_engine(name, weights, backend, ema=ema, **engine_options)
    if engine_options:
        raise TypeError(f"options {sorted(engine_options)} apply only to engine backends")
    from .models.factory import create_model

    return create_model(name, weights, trainable=trainable,
                        batch_norm_momentum=batch_norm_momentum, ema=ema)


def save(model: MobileNet, path: str | Path) -> Path:
    """Write ``model``'s weights as mobilevec safetensors (TF-Slim names, TF layout)."""
    from .models.factory import save_model

    return save_model(model, path)
