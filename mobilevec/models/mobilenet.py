"""The MobileNet feature-vector module, built from a resolved architecture table."""

from __future__ import annotations

import torch
from torch import nn

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


class MobileNet(nn.Module):
    """A TF-Slim MobileNet V2/V3 with the TF Hub feature-vector contract.

    ``forward(x)``: ``x`` float32 NCHW RGB in [0, 1], any H, W ≥ 32 → ``(N, num_features)``
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
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return self.logits(x)
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(N, num_features)`` feature vector of float32 NCHW RGB in [0, 1]."""
        x = _scaled_input(x)
        for layer in self.layers.values():
            x = layer(x)
        return x.flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (before global pooling), NCHW."""
        x = _scaled_input(x)
        for layer in self.layers.values():
            if isinstance(layer, GlobalAvgPool):
                break
            x = layer(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits; with TF-Slim weights index 0 is the background class."""
        if self.classifier is None:
            raise RuntimeError(f"{self.config.name} has no classifier: its weights carry no "
                               "Logits/Conv2d_1c_1x1 layer")
        return self.classifier(self.features(x))

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
