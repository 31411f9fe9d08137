"""A directory of ``.npy`` files, one per TF-Slim variable, indexed by a MANIFEST.tsv.

Files listed but absent are skipped (logged).
The manifest (tab-separated, header ``file  tf_slim_variable  shape  dtype  sha256``) lies
inside the directory as ``MANIFEST.tsv`` or beside it as ``<dir>.MANIFEST.tsv``. Its shape,
dtype and sha256 columns are checked when present. Files are read with
``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import numpy as np

from ..errors import WeightsError

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.tsv"


def find_manifest(directory: Path) -> Path | None:
    for candidate in (directory / MANIFEST_NAME,
                      directory.with_name(directory.name + "." + MANIFEST_NAME)):
        if candidate.is_file():
            return candidate
    return None


def is_npy_dir(path: str | Path) -> bool:
    """A directory with ``.npy`` files and a manifest."""
    p = Path(path)
    return p.is_dir() and find_manifest(p) is not None and any(p.glob("*.npy"))


def _parse_shape(text: str) -> tuple[int, ...]:
    text = text.strip().strip("()[]")
    return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())


def read_npy_dir(path: str | Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Read every variable listed in the manifest; ``verify`` checks the sha256 column."""
    directory = Path(path)
    manifest = find_manifest(directory)
    if manifest is None:
        raise WeightsError(directory, f"no {MANIFEST_NAME} inside or "
                           f"{directory.name}.{MANIFEST_NAME} beside this directory; it maps "
                           ".npy files to TF-Slim variable names")
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"file", "tf_slim_variable"} <= set(rows[0]):
        raise WeightsError(manifest, "manifest needs the columns 'file' and 'tf_slim_variable'")
    variables: dict[str, np.ndarray] = {}
    for row in rows:
        name, file = row["tf_slim_variable"], directory / row["file"]
        if not file.is_file():
            # Partial snapshots exist (the public V2 one lacks the logits kernel); whoever
            # needs the variable reports it by name, so skipping here loses nothing.
            log.info("%s: listed in %s but absent; skipped", file, manifest.name)
            continue
        data = file.read_bytes()
        if verify and row.get("sha256") and hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise WeightsError(file, "sha256 differs from the manifest (corrupt or replaced)",
                               variable=name)
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise WeightsError(file, f"not a readable .npy file ({e})", variable=name) from e
        if (row.get("shape") or "").strip() and tuple(array.shape) != _parse_shape(row["shape"]):
            raise WeightsError(file, f"shape {array.shape} differs from the manifest's "
                                   f"{row['shape']}", variable=name)
        if row.get("dtype") and str(array.dtype) != row["dtype"]:
            raise WeightsError(file, f"dtype {array.dtype} differs from the manifest's "
                               f"{row['dtype']}", variable=name)
        variables[name] = array
    return variables
