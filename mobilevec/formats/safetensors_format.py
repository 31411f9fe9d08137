"""mobilevec's own format: safetensors keyed by TF-Slim variable names, TF layout.

The header's ``__metadata__`` records ``format=mobilevec``, the format version and, when
written from a model, its name; readers of other tools see plain named float32 tensors.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .._io import atomic_write
from ..errors import WeightsError
from . import _limits

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


# safetensors dtype -> numpy dtype (little-endian). BF16 has no numpy type: it is read as
# uint16 and widened exactly to float32, its top half. F8 and other exotic types are refused.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
           "BOOL": "?"}
_MAX_HEADER = 16 << 20  # the header of a MobileNet's 300 tensors is about 40 kB


def _fail(path: str | Path, why: str, variable: str | None = None) -> WeightsError:
    return WeightsError(path, f"not a readable safetensors file: {why}", variable)


def _read_header(path: Path, f, file_size: int) -> tuple[dict, int]:
    """(header object, offset of the data section); every entry checked against the file."""
    head = f.read(8)
    if len(head) < 8:
        raise _fail(path, f"only {len(head)} bytes")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(file_size - 8, _MAX_HEADER):
        raise _fail(path, f"header length {length} does not fit the {file_size}-byte file")
    try:
        header = json.loads(f.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "__metadata__ is not an object of strings")
    _limits.check_count(path, len(header), "tensors")
    return header, 8 + length


def _entries(path: Path, header: dict,
             data_size: int) -> list[tuple[str, np.dtype, tuple, int, int]]:
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        _limits.check_name(path, name)
        if not isinstance(info, dict):
            raise _fail(path, "tensor entry is not an object", name)
        dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype_name not in _DTYPES:
            raise _fail(path, f"unsupported dtype {dtype_name!r} (supported: "
                        f"{', '.join(_DTYPES)})", name)
        if not isinstance(shape, list) or not (isinstance(offsets, list) and len(offsets) == 2
                                               and all(type(o) is int for o in offsets)):
            raise _fail(path, "shape or data_offsets malformed", name)
        if any(type(d) is not int for d in shape):
            raise _fail(path, f"shape {shape!r} is not a list of integers", name)
        dtype = np.dtype(_DTYPES[dtype_name])
        nbytes = _limits.tensor_bytes(path, shape, dtype.itemsize, name)
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != nbytes:
            raise _fail(path, f"data_offsets {offsets} do not fit {nbytes} bytes of {dtype_name} "
                        f"{shape} in a {data_size}-byte data section", name)
        entries.append((name, np.dtype(dtype), tuple(shape), begin, end))
    last_end, last_name = 0, None
    for name, _, _, begin, end in sorted(entries, key=lambda e: e[3]):
        if begin < last_end:
            raise _fail(path, f"tensor bytes overlap those of {last_name!r}", name)
        if end > begin:
            last_end, last_name = end, name
    return entries


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(p, "no such file (or not a regular file)")
    try:
        with p.open("rb") as f:
            header, _ = _read_header(p, f, os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise WeightsError(p, f"unreadable safetensors header ({e})") from e
    return dict(header.get("__metadata__") or {})


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor, checked against the file before any is read (BF16 widened to float32)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(p, "no such file (or not a regular file)")
    try:
        with p.open("rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            header, start = _read_header(p, f, file_size)
            entries = _entries(p, header, file_size - start)
            data = f.read()
    except OSError as e:
        raise WeightsError(p, f"not a readable safetensors file ({e})") from e
    out = {}
    for name, dtype, shape, begin, end in entries:
        array = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                              offset=begin).reshape(shape)
        if header[name]["dtype"] == "BF16":
            out[name] = (array.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = np.array(array, dtype=dtype.newbyteorder("="))
    return out


def write_safetensors(variables: dict[str, np.ndarray], path: str | Path,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write atomically (:func:`mobilevec._io.atomic_write`): a crash never leaves a half file."""
    from safetensors.numpy import save_file

    meta = {"format": "mobilevec", "format_version": FORMAT_VERSION, **(metadata or {})}
    tensors = {k: np.ascontiguousarray(v) for k, v in variables.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
