"""A directory of ``.npy`` files, one per TF-Slim variable, indexed by a MANIFEST.tsv.

Files listed but absent are skipped (logged).
The manifest (UTF-8, tab-separated, header ``file  tf_slim_variable  shape  dtype  sha256``)
lies inside the directory as ``MANIFEST.tsv`` or beside it as ``<dir>.MANIFEST.tsv``. Its
shape, dtype and sha256 columns are checked when present.

The manifest is part of the artifact, so it may only name plain files inside the
directory: no absolute paths, no ``..``, no symbolic links. Each file must be a ``.npy``
(format 1.0 or 2.0) of a plain numeric dtype whose header accounts for exactly the bytes
that follow it; the header is parsed as a literal (no pickle, no numpy internals) and the
data checked against the file size before it is read.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import logging
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import WeightsError
from . import _limits

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.tsv"
_MAX_MANIFEST_BYTES = 16 << 20
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000  # numpy's own default limit for a .npy header
_PLAIN_DESCR = re.compile(r"[<>|=]?(?:b1|\?|[iu][1248]|f[248])")


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


def _read_manifest(manifest: Path) -> list[dict[str, str | None]]:
    try:
        raw = manifest.read_bytes()
    except OSError as e:
        raise WeightsError(manifest, f"cannot read the manifest ({e})") from e
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise WeightsError(manifest, f"manifest larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WeightsError(manifest, f"manifest is not UTF-8 ({e})") from None
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"):
            rows.append(row)  # counted as read: no list of a million rows first
            _limits.check_count(manifest, len(rows), "manifest rows")
    except csv.Error as e:
        raise WeightsError(manifest, f"malformed manifest ({e})") from None
    if not rows or not {"file", "tf_slim_variable"} <= set(rows[0]):
        raise WeightsError(manifest, "manifest needs the columns 'file' and 'tf_slim_variable'")
    return rows


def _member(directory: Path, manifest: Path, name: str | None, variable: str) -> Path:
    """The file a manifest row names, which must be a plain path inside ``directory``."""
    if not name:
        raise WeightsError(manifest, "a row without a file name", variable=variable)
    _limits.check_name(manifest, name, "file name")
    rel = PurePosixPath(name)
    if ("\\" in name or "\x00" in name or rel.is_absolute() or ".." in rel.parts
            or (len(name) > 1 and name[1] == ":")):
        raise WeightsError(manifest, f"file {name!r} is not a plain path inside "
                           f"{directory.name}/", variable=variable)
    path = directory.joinpath(*rel.parts)
    real_dir = os.path.realpath(directory)
    if os.path.islink(path) or not os.path.realpath(path).startswith(
            os.path.join(real_dir, "")):
        raise WeightsError(path, f"a link, or outside {directory.name}/: refused",
                           variable=variable)
    return path


def _npy_header(file: Path, data: bytes, variable: str) -> tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran order, data offset) from a format 1.0 / 2.0 header, parsed
    strictly: a literal dict of exactly ``descr`` (a plain dtype string), ``fortran_order``
    and ``shape`` (a tuple of integers)."""
    def bad(why: str) -> WeightsError:
        return WeightsError(file, f"not a readable .npy header ({why})", variable=variable)

    if not data.startswith(_NPY_MAGIC) or len(data) < 10:
        raise WeightsError(file, "not a .npy file (no \\x93NUMPY magic)", variable=variable)
    major = data[6]
    if major not in (1, 2):
        raise bad(f"format version {major}.{data[7]} not supported")
    start = 10 if major == 1 else 12
    length = int.from_bytes(data[8:start], "little")
    if length > _MAX_HEADER or start + length > len(data):
        raise bad(f"header of {length} bytes in a {len(data)}-byte file")
    try:
        header = ast.literal_eval(data[start:start + length].decode("latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise bad("expected a dict of descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool) or not isinstance(
            shape, tuple) or any(type(d) is not int for d in shape):
        raise bad(f"descr {descr!r}, fortran_order {fortran!r}, shape {shape!r}")
    # Only plain number types reach np.dtype: its parser of other strings raises anything
    # (np.dtype("i4,(2") raises SyntaxError, found by the atheris fuzz target).
    if not _PLAIN_DESCR.fullmatch(descr):
        raise WeightsError(file, f"dtype {descr[:40]!r} is not a plain number type",
                           variable=variable)
    dtype = np.dtype(descr)
    return dtype, shape, fortran, start + length


def _load_npy(file: Path, data: bytes, variable: str) -> np.ndarray:
    """The array of a ``.npy`` file's bytes; WeightsError unless the header fits the size."""
    dtype, shape, fortran, offset = _npy_header(file, data, variable)
    nbytes = _limits.tensor_bytes(file, shape, dtype.itemsize, variable)
    if offset + nbytes != len(data):
        raise WeightsError(file, f"header says {nbytes} bytes of {dtype} {list(shape)}, the "
                           f"file holds {len(data) - offset}", variable=variable)
    array = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # a writable copy


def read_npy_dir(path: str | Path, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Read every variable listed in the manifest; ``verify`` checks the sha256 column."""
    directory = Path(path)
    manifest = find_manifest(directory)
    if manifest is None:
        raise WeightsError(directory, f"no {MANIFEST_NAME} inside or "
                           f"{directory.name}.{MANIFEST_NAME} beside this directory; it maps "
                           ".npy files to TF-Slim variable names")
    rows = _read_manifest(manifest)
    variables: dict[str, np.ndarray] = {}
    budget = _limits.Budget(directory)
    for row in rows:
        name = row.get("tf_slim_variable") or ""
        if not name:
            raise WeightsError(manifest, "a row without a tf_slim_variable")
        _limits.check_name(manifest, name, "variable name")
        if name in variables:
            raise WeightsError(manifest, "two rows name this variable", variable=name)
        file = _member(directory, manifest, row.get("file"), name)
        if not file.is_file():
            # Partial snapshots exist (the public V2 one lacks the logits kernel); whoever
            # needs the variable reports it by name, so skipping here loses nothing.
            log.info("%s: listed in %s but absent; skipped", file, manifest.name)
            continue
        try:
            size = file.stat().st_size
            budget.take(size, name)
            data = file.read_bytes()
        except OSError as e:
            raise WeightsError(file, f"cannot read ({e})", variable=name) from e
        expected_sha = (row.get("sha256") or "").strip()
        if verify and expected_sha and hashlib.sha256(data).hexdigest() != expected_sha:
            raise WeightsError(file, "sha256 differs from the manifest (corrupt or replaced)",
                               variable=name)
        array = _load_npy(file, data, name)
        shape_text = (row.get("shape") or "").strip()
        if shape_text:
            try:
                declared = _parse_shape(shape_text)
            except ValueError:
                raise WeightsError(manifest, f"unreadable shape {shape_text!r}",
                                   variable=name) from None
            if tuple(array.shape) != declared:
                raise WeightsError(file, f"shape {array.shape} differs from the manifest's "
                                   f"{shape_text}", variable=name)
        dtype_text = (row.get("dtype") or "").strip()
        if dtype_text and str(array.dtype) != dtype_text:
            raise WeightsError(file, f"dtype {array.dtype} differs from the manifest's "
                               f"{dtype_text}", variable=name)
        variables[name] = array
    return variables
