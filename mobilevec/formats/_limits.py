"""What a MobileNet artifact can need, and the checks every reader makes before it allocates.

The readers take hostile files (docs/security.md): any declared count, size, offset or
shape is checked against these caps and against the bytes actually present *before*
anything of that size is allocated, with Python integers (``np.prod`` wraps around in
int64). The caps are far above what the largest MobileNet needs (V2 1.4 with logits:
6.1 M parameters, about 650 variables once a checkpoint's EMA and optimizer slots are
counted) and far below what hurts a machine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import WeightsError

MAX_TENSORS = 20_000  # entries of one artifact (tensors, manifest rows, layers, ops)
MAX_NAME_BYTES = 4096  # one tensor, key or file name
MAX_RANK = 8
MAX_SHARDS = 1024  # TensorBundle data files
MAX_TENSOR_BYTES = 1 << 30  # one decoded tensor
MAX_TOTAL_BYTES = 1 << 30  # all decoded tensors of one artifact


def element_count(path: str | Path, shape: Iterable[int], variable: str | None = None) -> int:
    """The number of elements of ``shape`` (exact), after checking its rank and dims."""
    dims = tuple(shape)
    if len(dims) > MAX_RANK:
        raise WeightsError(path, f"shape of rank {len(dims)} (at most {MAX_RANK})", variable)
    if any(not isinstance(d, int) or d < 0 for d in dims):
        raise WeightsError(path, f"shape {list(dims)} has a negative or non-integer "
                           "dimension", variable)
    return math.prod(dims)


def tensor_bytes(path: str | Path, shape: Iterable[int], itemsize: int,
                 variable: str | None = None) -> int:
    """Bytes that a tensor of ``shape`` and ``itemsize`` occupies, within MAX_TENSOR_BYTES."""
    size = element_count(path, shape, variable) * itemsize
    if size > MAX_TENSOR_BYTES:
        raise WeightsError(path, f"tensor of shape {list(shape)} would take {size} bytes, more "
                           f"than {MAX_TENSOR_BYTES} (no MobileNet has such a tensor)", variable)
    return size


def check_count(path: str | Path, count: int, what: str, limit: int = MAX_TENSORS) -> int:
    if count > limit:
        raise WeightsError(path, f"{count} {what}, more than the {limit} a MobileNet "
                           "artifact can need")
    return count


def check_name(path: str | Path, name: str | bytes, what: str = "name") -> None:
    if len(name) > MAX_NAME_BYTES:
        raise WeightsError(path, f"a {len(name)}-byte {what} (at most {MAX_NAME_BYTES})",
                           repr(name[:80]))


class Budget:
    """Counts decoded bytes of one artifact against MAX_TOTAL_BYTES."""

    def __init__(self, path: str | Path, limit: int = MAX_TOTAL_BYTES):
        self.path, self.limit, self.used = path, limit, 0

    def take(self, size: int, variable: str | None = None) -> None:
        self.used += size
        if self.used > self.limit:
            raise WeightsError(self.path, f"tensors add up to more than {self.limit} bytes "
                               "(no MobileNet is that large)", variable)
