"""What every inference engine shares: the call contract, input checks, thread count.

An engine is called like the torch module: ``engine(x)`` with ``x`` float32 NCHW RGB in
[0, 1], a numpy array or a torch tensor, of shape ``(N, 3, H, W)`` at the engine's
``image_size`` (the contract of :mod:`mobilevec.models.inputs`, checked on every call); it
returns ``(N, num_features)`` float32 of the same type (numpy in,
numpy out; tensor in, CPU tensor out). ``config`` is the model's
:class:`~mobilevec.models.registry.ModelConfig`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .._optional import require
from ..errors import MissingBackendError, MissingDependencyError
from ..models.inputs import check_images
from ..models.registry import ModelConfig

if TYPE_CHECKING:
    import torch

# pip extra that installs each optional runtime (pyproject [project.optional-dependencies]).
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "litert"}


def require_backend(backend: str, module: str) -> ModuleType:
    """Import ``module`` for ``backend``, or raise :class:`MissingBackendError` naming the
    backend's pip extra."""
    try:
        return require(module, EXTRAS[backend])
    except MissingDependencyError as e:
        raise MissingBackendError(backend, module, EXTRAS[backend]) from e


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


class Engine:
    """Base class: subclasses implement :meth:`run` on a checked float32 NCHW array."""

    backend = "?"

    def __init__(self, config: ModelConfig, image_size: tuple[int, int], num_features: int):
        self.config = config
        self.image_size = image_size
        self.num_features = num_features

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x`` C-contiguous float32 ``(N, 3, H, W)``, N ≥ 1 → ``(N, D)`` float32."""
        raise NotImplementedError

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor twin of :meth:`run` (numpy views both ways: no copies)."""
        import torch

        return torch.from_numpy(self.run(x.numpy()))

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        check_images(x, who=f"{self.backend} engine for {self.config.name}",
                     size=self.image_size)
        # A tensor exists only where torch was imported; engines themselves never import it.
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            t = x.detach().to("cpu", torch.float32).contiguous()
            if t.shape[0] == 0:
                return torch.zeros((0, self.num_features), dtype=torch.float32)
            return self.run_tensor(t)
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.shape[0] == 0:
            return np.zeros((0, self.num_features), np.float32)
        return self.run(a)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"{type(self).__name__}({self.config.name}, {h}x{w} -> {self.num_features}, "
                f"backend={self.backend!r})")
