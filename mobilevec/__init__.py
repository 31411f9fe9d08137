"""mobilevec: the TF Hub MobileNet V2/V3 feature vectors, faithful to TF-Slim, in PyTorch.

>>> import mobilevec
>>> model = mobilevec.create("mobilenet_v3_small_075_224", weights="path/to/artifact")
>>> vectors = model(images)  # float32 NCHW in [0, 1] -> (N, 1024)

The names below are imported on first use (PEP 562), so that ``import mobilevec`` and the
command line start without importing torch or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _compat  # noqa: F401 - installs the 0.1 module paths
from ._version import __version__
from .errors import MobilevecError, UnknownModelError, WeightsError

if TYPE_CHECKING:
    from .api import create, save
    from .embedding.embedder import Embedder, embedder
    from .formats.detect import read_weights
    from .hub.loader import load
    from .models.mobilenet import MobileNet
    from .models.registry import get_config, list_models

_LAZY = {
    "create": "api", "save": "api",
    "read_weights": "formats.detect",
    "load": "hub.loader",
    "MobileNet": "models.mobilenet",
    "get_config": "models.registry", "list_models": "models.registry",
    "embedder": "embedding.embedder", "Embedder": "embedding.embedder",
}

__all__ = ["Embedder", "MobileNet", "MobilevecError", "UnknownModelError", "WeightsError",
           "__version__", "create", "embedder", "get_config", "list_models", "load",
           "read_weights", "save"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobilevec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
