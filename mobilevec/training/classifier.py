"""The trainable classifier: a softmax head over a MobileNet feature vector."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.mobilenet import MobileNet


def batch_norm_is_folded(model: nn.Module) -> bool:
    """Whether every BatchNorm is the exact identity a folded (TFLite) artifact loads as:
    gamma 1, moving mean 0, moving variance + eps = 1 (the bias lives in beta)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return bool(norms) and all(
        torch.all(m.weight == 1) and torch.all(m.running_mean == 0)
        and torch.all(m.running_var + m.eps == 1) for m in norms)


class Classifier(nn.Module):
    """``backbone`` feature vector → (L2 normalise) → dropout → ``backbone.classifier``.

    ``forward``: float32 NCHW RGB in [0, 1] → ``(N, num_classes)`` logits. In eval mode
    with ``flip_average`` the features are the mean of those of the image and its mirror.
    ``new_head``: attach a freshly initialised head (default); False keeps the backbone's
    own ``num_classes``-way classifier (a trained run's). ``freeze_batch_norm`` keeps the
    backbone's BatchNorm in inference mode even in training mode (fine-tuning weights whose
    BatchNorm is folded, see :class:`~mobilevec.training.train.TrainConfig`).
    ``feature_engine``: an inference engine running the backbone's weights
    (:mod:`mobilevec.engines`) that computes the features outside training.
    """

    def __init__(self, backbone: MobileNet, num_classes: int, dropout: float = 0.0,
                 normalize_features: bool = False, flip_average: bool = False, *,
                 new_head: bool = True, freeze_batch_norm: bool = False,
                 feature_engine: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if new_head or backbone.classifier is None \
                or backbone.classifier.out_features != num_classes:
            backbone.set_num_classes(num_classes)
        for p in backbone.classifier.parameters():  # the head trains whatever `trainable` says
            p.requires_grad_(True)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.normalize_features = normalize_features
        self.flip_average = flip_average
        self.config = backbone.config
        self.num_classes = num_classes
        self.num_features = backbone.num_features
        self.batch_norm_frozen = freeze_batch_norm
        self.feature_engine = feature_engine

    @property
    def num_outputs(self) -> int:
        """Width of ``forward``'s output: the number of classes."""
        return self.num_classes

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.batch_norm_frozen:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone.features
        if self.feature_engine is not None and not self.training:
            backbone = self.feature_engine
        vectors = backbone(x)
        if self.flip_average and not self.training:
            vectors = (vectors + backbone(x.flip(-1))) * 0.5
        return vectors

    def head(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.normalize_features:
            vectors = F.normalize(vectors, dim=1)
        return self.backbone.classifier(self.dropout(vectors))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FlipViews(nn.Module):
    """The backbone's features of each image and of its mirror image, side by side
    (``(N, 2 D)``): one decode pass for
    :func:`~mobilevec.embedding.batching.embed_files` gives both."""

    def __init__(self, backbone: MobileNet):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.num_outputs = 2 * backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.backbone.features(x), self.backbone.features(x.flip(-1))], 1)


class FlippedPairs:
    """Like :class:`FlipViews`, for an engine (numpy in, numpy out): its features of each
    image and of its mirror image, side by side ``(N, 2 D)``."""

    def __init__(self, engine):
        self.engine = engine
        self.config = engine.config
        self.image_size = engine.image_size
        self.num_outputs = 2 * engine.num_features

    def __call__(self, x: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(x[..., ::-1])
        return np.concatenate([self.engine(x), self.engine(mirrored)], 1)
