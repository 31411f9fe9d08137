"""Recognise a weights artifact by its content and read it with the matching reader."""

from __future__ import annotations

import importlib
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MobilevecError, WeightsError

log = logging.getLogger(__name__)

# (format name, module, detector, reader) in the order they are tried. Detectors look at
# content (magic bytes, directory structure), not at file names.
_FORMATS = (
    ("safetensors", "safetensors_format", "is_safetensors", "read_safetensors"),
    ("tflite", "tflite", "is_tflite", "read_tflite"),
    ("keras_h5", "keras_h5", "is_keras_h5", "read_keras_h5"),
    ("saved_model", "saved_model", "is_saved_model", "read_saved_model"),
    ("tf_checkpoint", "tf_checkpoint", "is_tensor_bundle", "read_tf_checkpoint"),
    ("npy", "npy", "is_npy_dir", "read_npy_dir"),
)


@dataclass
class Weights:
    """Variables read from an artifact, with where they came from."""

    variables: dict[str, np.ndarray]
    format: str
    path: Path

    @property
    def root_scope(self) -> str | None:
        """``MobilenetV2`` / ``MobilenetV3`` when all names share one root, else None."""
        roots = {name.split("/", 1)[0] for name in self.variables}
        return roots.pop() if len(roots) == 1 else None


def _function(module: str, name: str):
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def detect_format(path: str | Path) -> str:
    """Name of the artifact's format; :class:`WeightsError` when none matches."""
    p = Path(path)
    if not p.exists() and not Path(str(p) + ".index").exists():
        raise WeightsError(p, "no such file or directory")
    for name, module, detector, _ in _FORMATS:
        if _function(module, detector)(p):
            return name
    raise WeightsError(p, "unrecognised weights format; expected a TF checkpoint, a SavedModel "
                          "directory, a Keras .h5, a .tflite, a .safetensors or a directory of "
                          ".npy files with a MANIFEST.tsv")


def read_weights(path: str | Path, *, ema: bool = True) -> Weights:
    """Read any supported artifact into TF-Slim-named float32 variables.

    ``ema`` picks the ``ExponentialMovingAverage`` values of a TF checkpoint (the
    weights TF Hub published); other formats hold one set of values and ignore it.
    """
    p = Path(path)
    fmt = detect_format(p)
    _, module, _, reader = next(f for f in _FORMATS if f[0] == fmt)
    kwargs = {"ema": ema} if fmt == "tf_checkpoint" else {}
    try:
        variables = _function(module, reader)(p, **kwargs)
    except MobilevecError:
        raise
    except (ArithmeticError, LookupError, MemoryError, OSError, RecursionError, TypeError,
            ValueError, struct.error) as e:
        # Every reader checks its input and raises WeightsError itself (the fuzz tests hold
        # them to it); this is the last line, so that a reader's slip still reaches the
        # caller as the documented error, naming the file.
        log.warning("%s reader raised %s on %s; reported as WeightsError", fmt,
                    type(e).__name__, p, exc_info=True)
        raise WeightsError(p, f"unreadable {fmt} artifact ({type(e).__name__}: {e})") from e
    if not variables:
        raise WeightsError(p, f"the {fmt} artifact holds no variables")
    variables = {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
                 for k, v in variables.items()}
    log.debug("read %d variables from %s (%s)", len(variables), p, fmt)
    return Weights(variables, fmt, p)
