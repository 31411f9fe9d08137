"""mobilevec: the TF Hub MobileNet V2/V3 feature vectors, faithful to TF-Slim, in PyTorch.

>>> import mobilevec
>>> model = mobilevec.create("mobilenet_v3_small_075_224", weights="path/to/artifact")
>>> vectors = model(images)  # float32 NCHW in [0, 1] -> (N, 1024)
"""

from . import _compat  # noqa: F401 - installs the 0.1 module paths
from ._version import __version__
from .api import create, save
from .errors import MobilevecError, UnknownModelError, WeightsError
from .formats.detect import read_weights
from .hub.loader import load
from .models.mobilenet import MobileNet
from .models.registry import get_config, list_models

__all__ = ["MobileNet", "MobilevecError", "UnknownModelError", "WeightsError", "create",
           "__version__", "get_config", "list_models", "load", "read_weights", "save"]
