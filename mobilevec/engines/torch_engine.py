"""``torch-fused``: the folded network (:mod:`mobilevec.export.fused`) in eager PyTorch.

Channels-last activations (oneDNN's fast layout for depthwise and 1×1 convolutions on
x86), BatchNorm and scaling folded, ``torch.inference_mode``, denormals flushed to zero
(x86 computes denormal floats far slower, and flushing changes the vectors by far less
than float32 rounding). Timed by ``benchmarks/engines.py`` against the unfused module.
"""

from __future__ import annotations

import numpy as np
import torch

from ..export.fused import FusedNet
from ..export.torch_fused import FusedModule
from ..models.registry import get_config
from .base import Engine


class TorchFusedEngine(Engine):
    """Inference-only engine; ``threads`` sets ``torch.set_num_threads`` (process-wide:
    torch has one intra-op pool), None keeps torch's setting. Creating one turns on
    ``torch.set_flush_denormal`` for every call (it is per-thread CPU state, which other code
    on the thread may reset; ``flush_denormal=False`` leaves it alone)."""

    backend = "torch-fused"

    def __init__(self, net: FusedNet, threads: int | None = None, flush_denormal: bool = True):
        super().__init__(get_config(net.model), net.image_size, net.num_features)
        if threads:
            torch.set_num_threads(threads)
        self.flush_denormal = flush_denormal
        self.module = FusedModule(net).to(memory_format=torch.channels_last)

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if self.flush_denormal:
            torch.set_flush_denormal(True)
        with torch.inference_mode():
            y = self.module(x.contiguous(memory_format=torch.channels_last))
        return y.clone()  # an ordinary tensor, usable outside inference mode

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_tensor(torch.from_numpy(x)).numpy()
