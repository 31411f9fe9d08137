"""Embedding many image files: decode, batch, run the model, keep going past bad files."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .images import Crop, ImageError, load_image

log = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    """Vectors of the images that decoded, and (path, reason) for those that did not."""

    paths: list[Path]
    vectors: np.ndarray  # (len(paths), D) float32
    errors: list[tuple[Path, str]] = field(default_factory=list)


def _batches(paths: Iterable[Path], size: int, crop: Crop, batch_size: int,
             errors: list[tuple[Path, str]]) -> Iterator[tuple[list[Path], torch.Tensor]]:
    batch: list[Path] = []
    tensors: list[torch.Tensor] = []
    for path in paths:
        try:
            tensors.append(load_image(path, size, crop))
        except ImageError as e:
            log.warning("skipping %s", e)
            errors.append((Path(path), e.cause))
            continue
        batch.append(Path(path))
        if len(batch) == batch_size:
            yield batch, torch.stack(tensors)
            batch, tensors = [], []
    if batch:
        yield batch, torch.stack(tensors)


@torch.inference_mode()
def embed_files(model: torch.nn.Module, paths: Sequence[str | Path], *, size: int | None = None,
                crop: Crop = "none", batch_size: int = 32, progress=None) -> EmbedResult:
    """Embed ``paths`` with ``model``; undecodable files are reported, not fatal.

    ``size`` defaults to the model's published input size. ``progress`` is an optional
    callable receiving the number of files handled after each batch.
    """
    size = size or getattr(getattr(model, "config", None), "image_size", 224)
    model.eval()
    errors: list[tuple[Path, str]] = []
    done_paths: list[Path] = []
    vectors: list[np.ndarray] = []
    for batch, x in _batches([Path(p) for p in paths], size, crop, batch_size, errors):
        vectors.append(model(x).numpy())
        done_paths += batch
        if progress:
            progress(len(done_paths) + len(errors))
    dim = getattr(model, "num_features", 0)
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    return EmbedResult(done_paths, stacked, errors)
