"""mobilevec's own format: safetensors keyed by TF-Slim variable names, TF layout.

The header's ``__metadata__`` records ``format=mobilevec``, the format version and, when
written from a model, its name; readers of other tools see plain named float32 tensors.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .._io import atomic_write
from ..errors import WeightsError

FORMAT_VERSION = "1"


def is_safetensors(path: str | Path) -> bool:
    """Content check: an 8-byte little-endian header length followed by a JSON object."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size < 10:
        return False
    with p.open("rb") as f:
        head = f.read(9)
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length <= p.stat().st_size - 8


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise WeightsError(p, f"unreadable safetensors header ({e})") from e
    return dict(header.get("__metadata__") or {})


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(path, f"not a readable safetensors file ({e})") from e


def write_safetensors(variables: dict[str, np.ndarray], path: str | Path,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write atomically (:func:`mobilevec._io.atomic_write`): a crash never leaves a half file."""
    from safetensors.numpy import save_file

    meta = {"format": "mobilevec", "format_version": FORMAT_VERSION, **(metadata or {})}
    tensors = {k: np.ascontiguousarray(v) for k, v in variables.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
