"""Build the torch module of a model name from (optionally) weights; save its weights."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeviceError, WeightsError
from ..formats.detect import Weights, read_weights
from ..formats.safetensors_format import write_safetensors
from .names import load_tf_variables, logits_classes, to_tf_variables
from .registry import get_config

if TYPE_CHECKING:
    import torch

    from .mobilenet import MobileNet

log = logging.getLogger(__name__)


def create_model(name: str, weights: str | Path | Weights | None = None, *,
                 trainable: bool = True, batch_norm_momentum: float | None = None,
                 ema: bool = True) -> MobileNet:
    """Build model ``name`` (see :func:`~mobilevec.models.registry.list_models`) in eval mode.

    ``weights``: any supported artifact, file or directory, recognised by content (TF
    checkpoint, SavedModel, Keras ``.h5``, ``.tflite``, ``.safetensors``, ``.npy``
    directory), or :class:`~mobilevec.formats.detect.Weights` already read; ``None`` gives
    random initialisation. A classifier is attached when the weights carry a complete
    ``Logits`` layer. ``ema`` selects a TF checkpoint's moving averages (TF Hub's choice).
    ``batch_norm_momentum`` uses TF's convention (decay). ``trainable=False`` freezes the
    weights and keeps BatchNorm in inference mode, like ``hub.KerasLayer(trainable=False)``.

    The returned module maps float32 NCHW RGB in [0, 1] to ``(N, num_features)``.
    """
    from .mobilenet import MobileNet  # torch: imported by what builds a module, only

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


def save_model(model: MobileNet, path: str | Path) -> Path:
    """Write ``model``'s weights as mobilevec safetensors (TF-Slim names, TF layout)."""
    metadata = {"model": model.config.name}
    if model.classifier is not None:
        metadata["num_classes"] = str(model.classifier.out_features)
    return write_safetensors(to_tf_variables(model), path, metadata)


def model_fingerprint(model) -> str:
    """sha256 of the model name and every parameter and buffer: equal iff same vectors."""
    import torch

    digest = hashlib.sha256(str(getattr(getattr(model, "config", None), "name", "")).encode())
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else
                      t.float().numpy().tobytes())
    return digest.hexdigest()


def torch_device(name: str) -> torch.device:
    """The torch device ``name`` ("cpu", "cuda", "cuda:1", "mps"), checked to exist here.

    Raises :class:`~mobilevec.errors.DeviceError` (one line: what is missing and why)
    instead of torch's AssertionError from deep inside the first ``.to(device)``.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"--device {name}: not a torch device ({e}); use cpu, cuda, "
                          "cuda:N or mps") from None
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise DeviceError(f"--device {name}: this torch {torch.__version__} is a CPU-only "
                              "build (no CUDA); install a CUDA build of torch, or use "
                              "--device cpu")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: torch sees no CUDA GPU on this machine; use "
                              "--device cpu")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: there are {count} CUDA GPU(s), numbered "
                              f"0 to {count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {name}: Apple's MPS is not available here; use "
                              "--device cpu")
    elif device.type != "cpu":
        raise DeviceError(f"--device {name}: mobilevec runs on cpu, cuda or mps")
    return device
