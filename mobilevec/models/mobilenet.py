"""The MobileNet feature-vector module, built from a resolved architecture table."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .inputs import check_images
from .layers import ConvBnAct, GlobalAvgPool, InvertedResidual
from .registry import ModelConfig
from .specs import ResolvedBlock, ResolvedConv, ResolvedLayer


def _build_layer(layer: ResolvedLayer) -> nn.Module:
    if isinstance(layer, ResolvedConv):
        s = layer.spec
        return ConvBnAct(layer.in_channels, layer.out_channels, s.kernel, s.stride, s.act,
                         with_batch_norm=s.batch_norm)
    if isinstance(layer, ResolvedBlock):
        return InvertedResidual(layer)
    return GlobalAvgPool()


def _scaled_input(x: torch.Tensor) -> torch.Tensor:
    """Hub input in [0, 1] → the [-1, 1] that TF-Slim nets see, in channels-last memory.

    Channels-last is the layout oneDNN's CPU convolutions run natively: the whole net then
    runs in it, faster than NCHW (docs/benchmarks.md, "Measurements behind the code"). The
    shape stays NCHW.
    """
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return x * 2.0 - 1.0


def _compiling() -> bool:
    """Tracing or compiling: the value check (a data-dependent read) is skipped."""
    compiler = getattr(torch, "compiler", None)
    return torch.jit.is_tracing() or bool(compiler and compiler.is_compiling())


class MobileNet(nn.Module):
    """A TF-Slim MobileNet V2/V3 with the TF Hub feature-vector contract.

    ``forward(x)``: ``x`` float32 NCHW RGB in [0, 1], any H, W ≥ 32 (the contract of
    :mod:`mobilevec.models.inputs`: a tensor, or a numpy array for a numpy result) →
    ``(N, num_features)``
    (1280 for V2 ≤ 1.0, 1024 for V3 Small, 1280 for V3 Large). ``layers`` is keyed by the
    TF-Slim scopes of the architecture table, in order. ``classifier`` is the optional
    ``Logits/Conv2d_1c_1x1`` head (present when the weights carry one): see :meth:`logits`.

    ``trainable=False`` mirrors ``hub.KerasLayer(trainable=False)``: parameters are frozen
    and BatchNorm stays in inference mode even under ``model.train()``.

    ``output`` is "features" (the feature-vector modules) or "logits" (the classification
    modules: ``forward`` then returns :meth:`logits`); :meth:`features` always gives the
    feature vector.
    """

    def __init__(self, config: ModelConfig, num_classes: int | None = None,
                 background_class: bool = True):
        super().__init__()
        self.config = config
        resolved = config.resolved_layers()
        self.layers = nn.ModuleDict({layer.spec.scope: _build_layer(layer) for layer in resolved})
        self.num_features = config.num_features
        self.classifier: nn.Linear | None = None
        self.background_class = background_class
        if num_classes:
            self.set_num_classes(num_classes, background_class)
        self._trainable = True
        self.output = "features"
        self.set_batch_norm_momentum(config.batch_norm_momentum)

    @property
    def num_outputs(self) -> int:
        """Width of ``forward``'s output: the classes in "logits" mode, else the features."""
        if self.output == "logits" and self.classifier is not None:
            return self.classifier.out_features
        return self.num_features

    # --- the hub contract -------------------------------------------------------------
    # Each public entry point checks the input (mobilevec.models.inputs) once and takes a
    # tensor or a numpy array: numpy in, numpy out (computed without gradients), as the
    # engines do.
    def forward(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        if self.output == "logits":
            return self.logits(x)
        return self._run(x, "features")

    def features(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """The ``(N, num_features)`` feature vector of float32 NCHW RGB in [0, 1]."""
        return self._run(x, "features")

    def forward_features(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """The last spatial feature map (before global pooling), NCHW."""
        return self._run(x, "map")

    def logits(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Classifier logits; with TF-Slim weights index 0 is the background class."""
        if self.classifier is None:
            raise RuntimeError(f"{self.config.name} has no classifier: its weights carry no "
                               "Logits/Conv2d_1c_1x1 layer")
        return self._run(x, "logits")

    def _run(self, x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor | np.ndarray:
        if not _compiling():
            check_images(x, who=f"{self.config.name} (torch module)")
        param = next(self.parameters())
        if isinstance(x, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(param.device,
                                                                         param.dtype)
            with torch.no_grad():
                return self._compute(t, what).cpu().float().numpy()
        if x.dtype != param.dtype:  # float64 / float16 in: the parameters' precision
            x = x.to(param.dtype)
        return self._compute(x, what)

    def _compute(self, x: torch.Tensor, what: str) -> torch.Tensor:
        x = _scaled_input(x)
        for layer in self.layers.values():
            if what == "map" and isinstance(layer, GlobalAvgPool):
                return x
            x = layer(x)
        x = x.flatten(1)
        return self.classifier(x) if what == "logits" else x

    def set_num_classes(self, num_classes: int, background_class: bool = False) -> None:
        """Attach a fresh ``Logits/Conv2d_1c_1x1`` head (dropout is not part of inference)."""
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.background_class = background_class

    # --- training semantics -------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for p in self.parameters():
            p.requires_grad_(self._trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> MobileNet:
        super().train(mode)
        if not self._trainable:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def set_batch_norm_momentum(self, tf_momentum: float) -> None:
        """Set BN moving-average decay in TF's convention (0.997 ≡ torch momentum 0.003)."""
        if not 0.0 <= tf_momentum < 1.0:
            raise ValueError(f"batch_norm_momentum must be in [0, 1), got {tf_momentum}")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0 - tf_momentum
