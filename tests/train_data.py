"""Small synthetic class-folder trees for the training tests (real PNG files, tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"blue": (30, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


def write_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def class_tree(root: Path, per_class: int = 6, classes: dict | None = None,
               seed: int = 0) -> Path:
    """``root/<colour>/img_<i>.png``: one class per colour, noisy solid images (the noise
    drawn from ``seed``)."""
    for c, (name, colour) in enumerate((classes or COLOURS).items()):
        for i in range(per_class):
            write_image(root / name / f"img_{i}.png", colour, seed=10_000 * seed + 100 * c + i)
    return root
