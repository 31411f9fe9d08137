"""Labelled images from a class-folder tree: ``DATA_DIR/<class>/<image files>``.

Rules:

- every sub-folder of ``DATA_DIR`` (sorted by name, hidden ones skipped) is a class; its
  name is the class name and its images are found as :mod:`mobilevec.data.sources` walks a
  folder (recursively, by image suffix, any case, symlink loops walked once);
- image files directly inside ``DATA_DIR`` belong to no class and are an error;
- a class folder without images, fewer than two classes, or no images at all are errors
  (:class:`DatasetError`, naming the folder); a file that turns out not to decode is not
  an error here: the training pipeline reports and skips it;
- the train/validation split is stratified (each class split in the same proportion,
  at least one image of each class on each side) and depends only on the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .images import IMAGE_SUFFIXES
from .sources import expand_inputs


@dataclass
class LabeledFiles:
    """Image files with integer labels: ``labels[i]`` indexes ``class_names`` for ``paths[i]``."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabeledFiles:
        index = np.asarray(index, dtype=np.int64)
        return LabeledFiles([self.paths[i] for i in index], self.labels[index],
                            list(self.class_names))

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        n = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, n, strict=True)}


def read_class_folders(root: str | Path, class_names: Sequence[str] | None = None
                       ) -> LabeledFiles:
    """The labelled images under ``root`` (see the module rules).

    ``class_names`` (e.g. those of the training set, for a ``--val`` folder or an
    evaluation): labels are indices into it, and a folder that is not one of them is an
    error; classes of ``class_names`` with no folder are allowed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one sub-folder of images per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p.name for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DatasetError(f"{root}: images directly in the data folder belong to no class "
                           f"({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}); "
                           "put each class's images in a sub-folder named after the class")
    if not folders:
        raise DatasetError(f"{root}: no class folders (expected one sub-folder of images "
                           "per class)")
    names = list(class_names) if class_names is not None else [p.name for p in folders]
    index = {name: i for i, name in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for folder in folders:
        if folder.name not in index:
            raise DatasetError(f"{folder}: class {folder.name!r} is not one of the model's "
                               f"classes ({', '.join(names)})")
        found = expand_inputs([str(folder)]).paths
        if not found:
            empty.append(str(folder))
        paths += found
        labels += [index[folder.name]] * len(found)
    if not paths:
        raise DatasetError(f"{root}: no image files in any class folder (looked for "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    if empty:
        raise DatasetError(f"class folder without images: {', '.join(empty)} (remove it or "
                           "add images)")
    if class_names is None and len(folders) < 2:
        raise DatasetError(f"{root}: only one class ({folders[0].name}); a classifier needs "
                           "at least two class folders")
    return LabeledFiles(paths, np.asarray(labels, dtype=np.int64), names)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: each class shuffled with ``seed`` and split so that
    ``round(n * val_fraction)`` of its ``n`` images (at least 1, at most ``n - 1``) go to
    validation. Both index arrays are sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DatasetError(f"class {int(label)} has {len(members)} image; a train/"
                               "validation split needs at least 2 per class (or use --val)")
        members = rng.permutation(members)
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def split_dataset(data: LabeledFiles, val_fraction: float, seed: int
                  ) -> tuple[LabeledFiles, LabeledFiles]:
    """:func:`stratified_split` applied to ``data``; a class with too few images is named."""
    try:
        train, val = stratified_split(data.labels, val_fraction, seed)
    except DatasetError as e:
        counts = data.counts()
        small = [f"{name} ({n})" for name, n in counts.items() if n < 2]
        raise DatasetError(f"too few images for a validation split in class "
                           f"{', '.join(small)}; add images or give --val DIR") from e
    return data.subset(train), data.subset(val)
