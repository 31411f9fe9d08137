"""Training inputs from image files: decoded once, then augmented or resized per epoch.

Augmentation is TF Hub's image retraining recipe: a random resized crop (a window of
random area and aspect ratio, resized with the TF bilinear rule of
:mod:`mobilevec.data.images`) and a horizontal flip with probability 1/2.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .datasets import LabeledFiles
from .images import ImageError, load_rgb, resize_array

log = logging.getLogger(__name__)


def random_resized_crop(rgb: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                        scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = True) -> np.ndarray:
    """A random window of ``(H, W, 3)`` uint8 ``rgb`` covering a fraction in ``scale`` of
    its area with aspect ratio in ``ratio`` (log-uniform), resized to ``size`` with the TF
    bilinear rule and mirrored with probability 1/2: ``(3, h, w)`` float32 in [0, 1].
    Falls back to the whole image after 10 windows that do not fit."""
    height, width = rgb.shape[:2]
    window = rgb
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            window = rgb[top:top + h, left:left + w]
            break
    out = resize_array(window, size)
    if flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


@dataclass
class DecodedImages:
    """Decoded training images kept in memory (``(H, W, 3)`` uint8) with their labels."""

    paths: list[Path]
    images: list[np.ndarray]
    labels: np.ndarray
    errors: list[tuple[Path, str]] = field(default_factory=list)


def decode_labeled(files: LabeledFiles) -> DecodedImages:
    """Decode every file once; files that fail are logged, listed in ``errors`` and left out."""
    paths, images, labels, errors = [], [], [], []
    for path, label in zip(files.paths, files.labels, strict=True):
        try:
            images.append(load_rgb(path))
        except ImageError as e:
            log.warning("skipping %s: %s", path, e.cause)
            errors.append((path, e.cause))
            continue
        paths.append(path)
        labels.append(label)
    return DecodedImages(paths, images, np.asarray(labels, dtype=np.int64), errors)


def exact_inputs(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """The TF-rule inputs (squash-resize, no crop) of decoded images, ``(N, 3, h, w)``."""
    if not images:
        return torch.zeros((0, 3, *size))
    return torch.from_numpy(np.stack([resize_array(im, size) for im in images]))
