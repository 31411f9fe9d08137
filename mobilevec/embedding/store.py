"""Where embedding runs write vectors: a folder of part files, each finalised atomically.

A Parquet file cannot be appended once closed, and a writer killed by SIGKILL leaves no
footer, so one growing file can never be both resumable and safe. The store is instead a
folder of *parts*; each batch of vectors becomes one part, written to a temporary name,
fsynced, and renamed into place (``os.replace`` is atomic). A part either exists whole or
not at all, so a run killed at any instant loses at most the batch it was writing.

Layout for ``-o vectors.parquet`` (the folder *is* the output; pandas and pyarrow read it
as one dataset, at every instant, because they skip names starting with ``_`` or ``.``)::

    vectors.parquet/
      _mobilevec.json            what made the vectors: model, weights, preprocessing, dtype
      _lock                      held by the run writing the store
      part-000001.parquet        one batch
      part-000002-000157.parquet parts 2..157 merged at the end of a run (row groups of 8192)
      _errors/part-000003.csv    files that failed (path, reason, time, path_raw), compacted
                                 to one part at the end of each run
      _errors.csv                current failures (latest reason per path), rewritten at the end
      _quarantine/               damaged parts moved aside by ``embed`` (their files re-embedded)

Columns of a Parquet part: ``path`` (absolute, as given), ``size``, ``mtime_ns``, ``model``,
``vector`` (``dim`` float32 or float16), ``relpath`` (the path relative to the folder that
holds the store, ``/``-separated), ``path_raw`` and ``relpath_raw``. A file name that is
not valid UTF-8 (Latin-1 names from old disks and Samba shares) cannot be a Parquet string:
``path``/``relpath`` then show its undecodable bytes as ``\\xNN`` and ``path_raw``/
``relpath_raw`` hold the name's exact bytes (null for every other name), so that paths
round-trip losslessly.

**Merging without a moment of duplicates.** The end-of-run merge must replace many visible
parts by one in a single step, or external readers would count both. It moves the single
parts, one ``rename`` each (a row is always visible exactly once), into a folder
``part-A-B.parquet/`` that readers read like the files it holds, writes the merged part
under the hidden name ``_merge-A-B``, and swaps the two names in one atomic
``renameat2(RENAME_EXCHANGE)``: ``part-A-B.parquet`` is then the merged file, and the
hidden name holds the folder of singles, which is deleted. Where the file system cannot
swap (not Linux, some network file systems), parts are simply not merged. A run killed at
any step leaves a store that reads right; the next writer finishes or undoes the step.

For ``-o vectors.npy`` the parts (``part-N.npy`` + ``part-N.csv`` index, the index written
first: a part exists iff its ``.npy`` does) live in ``vectors.npy.parts/``, and each run ends
by exporting ``vectors.npy`` (float32 or float16, ``(N, D)``) and ``vectors.index.csv``
(``path,size,mtime_ns,path_raw``, row i describes ``vectors[i]``), both written
atomically. There the merged part's name says which parts it replaces, and opening the
store deletes replaced parts; only mobilevec reads that folder.

**Keys and moves.** Rows are keyed by (path, size, mtime_ns): a re-run skips a file whose
key is stored under its absolute path *or* its path relative to the store's folder, so a
store moved together with its images (a project folder copied elsewhere) still resumes. A
file that changed is embedded again and readers keep the newest row for each path
(``embed --prune`` drops the older rows, and those of files that are gone). Readers give
the recorded absolute paths while the store is where it was made; once moved, each path is
taken relative to the store's new place, or kept absolute where only that one exists.

**Damage.** A part that does not read (truncated, overwritten) makes readers fail with a
:class:`StoreError` naming it; the next ``embed`` moves it into ``_quarantine/`` and embeds
its files again. A store whose folder cannot be written (read-only media) can still be read,
and resumed when nothing is left to embed.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import TMP_MARK, atomic_write, fsync_dir, temporary_name, write_csv
from .._optional import require
from ..errors import StoreError

log = logging.getLogger(__name__)

META_NAME = "_mobilevec.json"
LOCK_NAME = "_lock"
QUARANTINE = "_quarantine"
FORMAT = "mobilevec-vectors/2"
_FORMAT_PREFIX = "mobilevec-vectors/"
_FORMAT_VERSION = 2  # 1: no relpath / raw columns, no merge folders (still read and resumed)
ROW_GROUP_ROWS = 8192
# What must match for vectors of two runs to be comparable (weights path may move).
COMPATIBLE_KEYS = ("model", "fingerprint", "dim", "dtype", "normalize", "preprocessing",
                   "precision")
# Stores written before a key existed hold its value then.
_KEY_DEFAULTS = {"precision": "fp32"}

Key = tuple[str, int, int]  # (absolute path, size in bytes, mtime in ns)
_PART = re.compile(r"^part-(\d{6,})(?:-(\d{6,}))?\.(parquet|npy)$")
_MERGING = "_merge-"  # the hidden merged part, then the folder of the parts it replaced
_ERROR_PART = re.compile(r"^part-(\d+)\.csv$")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276}
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass
class StoredVectors:
    """Everything a store holds, newest row per path: ``vectors[i]`` is ``paths[i]``'s."""

    paths: list[str]
    sizes: np.ndarray  # int64
    mtimes_ns: np.ndarray  # int64
    vectors: np.ndarray  # (N, D) float32 or float16, as stored
    meta: dict


def file_key(path: str | Path) -> Key:
    """(absolute path, size, mtime_ns) of a file; raises OSError if it cannot be stat'ed."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


# --- paths as text -----------------------------------------------------------------------
def path_text(path: str) -> str:
    """``path`` as valid UTF-8 text: the bytes of a name that is not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_raw(path: str) -> bytes | None:
    """The bytes of ``path`` when :func:`path_text` is not the path itself, else None."""
    raw = os.fsencode(path)
    try:
        if raw.decode("utf-8") == path:
            return None
    except UnicodeDecodeError:
        pass
    return raw


def path_from(text: str, raw: bytes | None) -> str:
    """The path that :func:`path_text` and :func:`path_raw` describe."""
    return os.fsdecode(raw) if raw is not None else text


def _relative(path: str, base: str) -> str | None:
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive (Windows)
        return None


def _hex(raw: bytes | None) -> str:
    return "" if raw is None else raw.hex()


def _unhex(value: str) -> bytes | None:
    return bytes.fromhex(value) if value else None


@dataclass
class _Rows:
    """The key columns of one part, paths decoded losslessly."""

    paths: list[str] = field(default_factory=list)
    relpaths: list[str | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def keys(self) -> list[Key]:
        return list(zip(self.paths, self.sizes, self.mtimes, strict=True))


def _require_pyarrow():
    pa = require("pyarrow", "parquet", purpose="Parquet output (or -o FILE.npy)")
    return pa, require("pyarrow.parquet", "parquet", purpose="Parquet output")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


class _Damaged(Exception):
    """A part file that does not read; ``cause`` says why."""

    def __init__(self, part: Path, cause: str):
        super().__init__(f"{part}: {cause}")
        self.part, self.cause = part, cause


# --- part formats ------------------------------------------------------------------------
class _ParquetParts:
    suffix = ".parquet"
    # Dictionary pages only where values repeat: on vectors and paths Arrow builds a
    # dictionary, finds no repeats and falls back, a slower write and a larger part.
    DICTIONARY_COLUMNS = ["model"]
    REQUIRED = ("path", "size", "mtime_ns", "vector")

    def __init__(self, dim: int, dtype: str, meta: dict):
        self.pa, self.pq = _require_pyarrow()
        pa = self.pa
        value = pa.float16() if dtype == "float16" else pa.float32()
        self.schema = pa.schema(
            [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
             ("model", pa.dictionary(pa.int32(), pa.string())),
             ("vector", pa.list_(value, dim)), ("relpath", pa.string()),
             ("path_raw", pa.binary()), ("relpath_raw", pa.binary())],
            metadata={"mobilevec": json.dumps(meta)})
        self.dtype = np.dtype(dtype)
        self.dim = dim
        self.model = meta["model"]

    def table(self, keys: Sequence[Key], vectors: np.ndarray, base: str | None = None):
        """The part table of ``keys`` and ``vectors``; ``relpath`` relative to ``base``."""
        pa = self.pa
        paths = [k[0] for k in keys]
        relpaths = [None if base is None else _relative(p, base) for p in paths]
        flat = pa.array(np.ascontiguousarray(vectors, self.dtype).reshape(-1))
        return pa.table([pa.array([path_text(p) for p in paths], pa.string()),
                         pa.array([k[1] for k in keys], pa.int64()),
                         pa.array([k[2] for k in keys], pa.int64()),
                         pa.array([self.model] * len(keys), pa.string()).dictionary_encode(),
                         pa.FixedSizeListArray.from_arrays(flat, self.dim),
                         pa.array([None if r is None else path_text(r) for r in relpaths],
                                  pa.string()),
                         pa.array([path_raw(p) for p in paths], pa.binary()),
                         pa.array([None if r is None else path_raw(r) for r in relpaths],
                                  pa.binary())],
                        schema=self.schema)

    def write(self, target: Path, keys: Sequence[Key], vectors: np.ndarray, base: str) -> None:
        table = self.table(keys, vectors, base)
        atomic_write(target, lambda tmp: self.pq.write_table(
            table, tmp, row_group_size=ROW_GROUP_ROWS, use_dictionary=self.DICTIONARY_COLUMNS))

    def _conform(self, table):
        """``table`` (a part of any format version) with this store's columns, in order."""
        pa = self.pa
        columns = []
        for f in self.schema:
            if f.name in table.column_names:
                columns.append(table.column(f.name).cast(f.type))
            else:  # a format-1 part: no relpath / raw columns
                columns.append(pa.nulls(table.num_rows, f.type))
        return pa.table(columns, schema=self.schema)

    def write_merged(self, target: Path, sources: list[Path],
                     masks: list[np.ndarray | None] | None = None) -> None:
        """``sources`` concatenated (rows where ``masks[i]`` is true) into ``target``."""
        masks = masks or [None] * len(sources)

        def write(tmp: Path) -> None:
            with self.pq.ParquetWriter(tmp, self.schema,
                                       use_dictionary=self.DICTIONARY_COLUMNS) as writer:
                pending, rows = [], 0
                for source, mask in zip(sources, masks, strict=True):
                    table = self._conform(self.pq.read_table(source))
                    if mask is not None:
                        table = table.filter(self.pa.array(mask))
                    pending.append(table)
                    rows += table.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        writer.write_table(self.pa.concat_tables(pending), ROW_GROUP_ROWS)
                        pending, rows = [], 0
                if pending:
                    writer.write_table(self.pa.concat_tables(pending), ROW_GROUP_ROWS)
        atomic_write(target, write)

    def read_rows(self, part: Path) -> _Rows:
        try:
            names = self.pq.read_schema(part).names
            missing = [c for c in self.REQUIRED if c not in names]
            if missing:
                raise _Damaged(part, f"not a mobilevec part (no column {missing[0]!r})")
            wanted = ["path", "size", "mtime_ns"] + [
                c for c in ("relpath", "path_raw", "relpath_raw") if c in names]
            t = self.pq.read_table(part, columns=wanted)
        except (FileNotFoundError, NotADirectoryError, _Damaged):
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a bad file vary
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None
        count = t.num_rows
        text = t.column("path").to_pylist()
        raw = t.column("path_raw").to_pylist() if "path_raw" in names else [None] * count
        rel = t.column("relpath").to_pylist() if "relpath" in names else [None] * count
        rel_raw = (t.column("relpath_raw").to_pylist() if "relpath_raw" in names
                   else [None] * count)
        return _Rows([path_from(p, r) for p, r in zip(text, raw, strict=True)],
                     [None if p is None else path_from(p, r)
                      for p, r in zip(rel, rel_raw, strict=True)],
                     t.column("size").to_pylist(), t.column("mtime_ns").to_pylist())

    def read_vectors(self, part: Path) -> np.ndarray:
        try:
            column = self.pq.read_table(part, columns=["vector"]).column("vector")
            column = column.combine_chunks()
            vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except Exception as e:  # noqa: BLE001
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None
        if vectors.shape[1] != self.dim:
            raise _Damaged(part, f"vectors of {vectors.shape[1]} values, the store's have "
                                 f"{self.dim}")
        return vectors

    def read_vectors_into(self, part: Path, out: np.ndarray) -> int:
        """Fill ``out`` (rows, dim) with the part's vectors, one row group at a time (no
        copy of the whole part); returns how many the part holds."""
        done = 0
        try:
            for batch in self.pq.ParquetFile(part).iter_batches(columns=["vector"]):
                column = batch.column(0)
                block = column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
                if block.shape[1] != self.dim:
                    raise _Damaged(part, f"vectors of {block.shape[1]} values, the store's "
                                         f"have {self.dim}")
                if done + len(block) <= len(out):
                    out[done:done + len(block)] = block
                done += len(block)
        except (FileNotFoundError, NotADirectoryError, _Damaged):
            raise
        except Exception as e:  # noqa: BLE001
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None
        return done

    def companions(self, part: Path) -> list[Path]:
        return []

    def orphans(self, folder: Path) -> list[Path]:
        return []


class _NpyParts:
    suffix = ".npy"
    HEADER = ("path", "size", "mtime_ns", "relpath", "path_raw", "relpath_raw")

    def __init__(self, dim: int, dtype: str, meta: dict):
        self.dtype = np.dtype(dtype)
        self.dim = dim

    @staticmethod
    def index_of(part: Path) -> Path:
        return part.with_suffix(".csv")

    def _index_rows(self, rows: _Rows) -> list[tuple]:
        return [(path_text(p), s, m, "" if r is None else path_text(r), _hex(path_raw(p)),
                 "" if r is None else _hex(path_raw(r)))
                for p, r, s, m in zip(rows.paths, rows.relpaths, rows.sizes, rows.mtimes,
                                      strict=True)]

    def _write(self, target: Path, rows: _Rows, array: np.ndarray) -> None:
        # index first: a part counts only once its .npy exists
        atomic_write(self.index_of(target),
                     lambda tmp: write_csv(tmp, self.HEADER, self._index_rows(rows)))
        array = np.ascontiguousarray(array, self.dtype)
        atomic_write(target, lambda tmp: _save_npy(tmp, array))

    def write(self, target: Path, keys: Sequence[Key], vectors: np.ndarray, base: str) -> None:
        rows = _Rows([k[0] for k in keys], [_relative(k[0], base) for k in keys],
                     [k[1] for k in keys], [k[2] for k in keys])
        self._write(target, rows, vectors)

    def write_merged(self, target: Path, sources: list[Path],
                     masks: list[np.ndarray | None] | None = None) -> None:
        masks = masks or [None] * len(sources)
        rows = _Rows()
        for source, mask in zip(sources, masks, strict=True):
            part = self.read_rows(source)
            keep = range(len(part)) if mask is None else np.flatnonzero(mask)
            for i in keep:
                rows.paths.append(part.paths[i])
                rows.relpaths.append(part.relpaths[i])
                rows.sizes.append(part.sizes[i])
                rows.mtimes.append(part.mtimes[i])
        atomic_write(self.index_of(target),
                     lambda tmp: write_csv(tmp, self.HEADER, self._index_rows(rows)))

        def write(tmp: Path) -> None:
            out = np.lib.format.open_memmap(tmp, "w+", self.dtype, (len(rows), self.dim))
            row = 0
            for source, mask in zip(sources, masks, strict=True):
                block = np.load(source, mmap_mode="r")
                block = block if mask is None else block[mask]
                out[row:row + len(block)] = block
                row += len(block)
            out.flush()
            del out
        atomic_write(target, write)

    def read_rows(self, part: Path) -> _Rows:
        index = self.index_of(part)
        try:
            lines = _read_csv(index)
            rows = _Rows()
            for line in lines:
                text, size, mtime = line[:3]
                rel, raw, rel_raw = (line[3:6] + ["", "", ""])[:3]
                rows.paths.append(path_from(text, _unhex(raw)))
                rows.relpaths.append(path_from(rel, _unhex(rel_raw)) if rel or rel_raw else None)
                rows.sizes.append(int(size))
                rows.mtimes.append(int(mtime))
            shape = np.load(part, mmap_mode="r").shape
        except FileNotFoundError as e:
            if Path(e.filename or "") == index and part.exists():
                raise _Damaged(part, f"its index {index.name} is missing") from None
            raise
        except (ValueError, OSError, csv.Error) as e:
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None
        if len(shape) != 2 or shape[0] != len(rows) or shape[1] != self.dim:
            raise _Damaged(part, f"{shape} vectors but {len(rows)} index rows of {self.dim}")
        return rows

    def read_vectors(self, part: Path) -> np.ndarray:
        try:
            return np.load(part)
        except (ValueError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None

    def read_vectors_into(self, part: Path, out: np.ndarray) -> int:
        """Fill ``out`` with the part's vectors (memory-mapped, copied in blocks)."""
        try:
            vectors = np.load(part, mmap_mode="r")
        except (ValueError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise _Damaged(part, f"{type(e).__name__}: {e}") from None
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise _Damaged(part, f"{vectors.shape} vectors, the store's have {self.dim} values")
        if len(vectors) == len(out):
            for start in range(0, len(out), ROW_GROUP_ROWS):
                out[start:start + ROW_GROUP_ROWS] = vectors[start:start + ROW_GROUP_ROWS]
        return len(vectors)

    def companions(self, part: Path) -> list[Path]:
        return [self.index_of(part)]

    def orphans(self, folder: Path) -> list[Path]:
        return [c for c in folder.glob("part-*.csv") if not c.with_suffix(".npy").exists()]


def _codec(kind: str, meta: dict):
    return (_ParquetParts if kind == "parquet" else _NpyParts)(meta["dim"], meta["dtype"], meta)


# --- the folder ----------------------------------------------------------------------------
def store_paths(output: str | Path) -> tuple[Path, str]:
    """(folder holding the parts, "parquet" or "npy") for an ``-o`` target."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        return output, "parquet"
    if suffix == ".npy":
        return output.with_name(output.name + ".parts"), "npy"
    if output.is_dir() and (output / META_NAME).exists():  # a parts folder named directly
        return output, _load_meta(output / META_NAME).get("kind", "parquet")
    raise StoreError(f"{output}: output must end in .parquet (a folder of Parquet parts) or "
                     ".npy (vectors.npy + vectors.index.csv)")


def _npy_outputs(output: Path) -> list[Path]:
    return [output, output.with_name(output.stem + ".index.csv"),
            output.with_name(output.stem + ".errors.csv")]


def _ours(name: str) -> bool:
    """Names a first run may leave before its metadata exists."""
    return name == LOCK_NAME or (name.startswith(".") and TMP_MARK in name)


def _refuse_foreign(output: Path, root: Path, kind: str) -> None:
    """Raise unless ``output`` is new, empty or a store mobilevec wrote (never overwrite or
    mix into files of another program)."""
    if (root / META_NAME).is_file():
        return
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} exists and is not a mobilevec vector folder; pick another "
                         "-o or remove it")
    if root.is_dir():
        foreign = sorted(p.name for p in root.iterdir() if not _ours(p.name))
        if foreign:
            raise StoreError(f"{root} holds files mobilevec did not write ({foreign[0]}"
                             f"{', ...' if len(foreign) > 1 else ''}) and no {META_NAME}: "
                             "not a mobilevec vector store; pick another -o (a new name or "
                             "an empty folder)")
    if kind == "npy":
        for path in _npy_outputs(output):
            if path.exists() or path.is_symlink():
                raise StoreError(f"{path} exists and was not written by mobilevec (there is "
                                 f"no {root.name}/ beside it); pick another -o or remove it")


def _load_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{meta_path} is damaged ({e}); the store cannot be used: move it "
                         "aside and embed into a new -o") from None
    version = str(meta.get("format", "")).removeprefix(_FORMAT_PREFIX)
    if version.isdigit() and int(version) > _FORMAT_VERSION:
        raise StoreError(f"{meta_path.parent} was written by a newer mobilevec (format "
                         f"{meta['format']}); upgrade mobilevec to use it")
    return meta


def _exchange_function() -> Callable[[bytes, bytes], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        return lambda a, b: renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    number = _RENAMEAT2_SYSCALL.get(os.uname().machine)
    if number is None:
        return None
    return lambda a, b: libc.syscall(number, _AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)


_EXCHANGE = _exchange_function()


def exchange(a: Path, b: Path) -> None:
    """Swap the names ``a`` and ``b`` (files or folders) in one atomic step; OSError where
    the platform or file system cannot."""
    if _EXCHANGE is None:
        raise OSError(errno.ENOSYS, "atomic exchange of names is not available here")
    if _EXCHANGE(os.fsencode(a), os.fsencode(b)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def _can_exchange(folder: Path) -> bool:
    """Whether :func:`exchange` works in ``folder`` (tried on two temporary files)."""
    if _EXCHANGE is None:
        return False
    a, b = temporary_name(folder / "probe-a"), temporary_name(folder / "probe-b")
    try:
        a.write_bytes(b"a")
        b.write_bytes(b"b")
        exchange(a, b)
        return a.read_bytes() == b"b"
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


@dataclass
class DoneKeys:
    """The keys a store holds, by absolute path and by path relative to its folder."""

    base: str
    absolute: set[Key] = field(default_factory=set)
    relative: set[Key] = field(default_factory=set)

    def add(self, rows: _Rows) -> None:
        self.absolute.update(rows.keys())
        self.relative.update((r, s, m) for r, s, m in zip(rows.relpaths, rows.sizes,
                                                           rows.mtimes, strict=True)
                             if r is not None)

    def __contains__(self, key: Key) -> bool:
        if key in self.absolute:
            return True
        relative = _relative(key[0], self.base)
        return relative is not None and (relative, key[1], key[2]) in self.relative

    def __len__(self) -> int:
        return len(self.absolute)


def _resolver(meta: dict, root: Path) -> Callable[[str, str | None], str]:
    """How a row's recorded (absolute, relative) path reads where the store is now."""
    base = os.path.abspath(root.parent)
    if meta.get("base") in (None, base):
        return lambda absolute, relative: absolute

    def resolve(absolute: str, relative: str | None) -> str:
        if relative is None:
            return absolute
        here = os.path.normpath(os.path.join(base, relative))
        return absolute if not os.path.lexists(here) and os.path.lexists(absolute) else here
    return resolve


def _parts(root: Path, suffix: str) -> list[tuple[int, int, Path]]:
    """(first, last, path) of the live parts, in order: single parts at the top and in
    merge folders, merged parts; a merged file's range hides singles it covers (what a
    format-1 merge killed before its clean-up leaves)."""
    found: list[tuple[int, int, Path, bool]] = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        m = _PART.match(entry.name)
        if not m or entry.suffix != suffix:
            continue
        first = int(m.group(1))
        if entry.is_dir():  # a merge folder: the singles being merged
            for inner in sorted(entry.iterdir()):
                n = _PART.match(inner.name)
                if n and not n.group(2) and inner.suffix == suffix and inner.is_file():
                    found.append((int(n.group(1)), int(n.group(1)), inner, False))
        else:
            found.append((first, int(m.group(2) or first), entry, True))
    ranges = [(a, b) for a, b, _, is_file in found if is_file and b > a]
    live = [(a, b, p) for a, b, p, _ in found
            if not any(lo <= a and b <= hi and (lo, hi) != (a, b) for lo, hi in ranges)]
    return sorted(live, key=lambda x: (x[0], x[1]))


def _damaged_error(e: _Damaged) -> StoreError:
    return StoreError(f"{e.part} is damaged ({e.cause}); run `mobilevec embed` again with "
                      "the same inputs and -o: it moves the part aside and embeds its images "
                      "again")


class VectorStore:
    """An open store (see the module doc). Use :meth:`open`; one writer at a time.

    A store whose folder cannot be written opens read-only (``writable`` False): its rows
    can be read, nothing appended.
    """

    def __init__(self, output: Path, root: Path, kind: str, meta: dict):
        self.output, self.root, self.kind, self.meta = output, root, kind, meta
        self.codec = _codec(kind, meta)
        self.base = os.path.abspath(root.parent)
        self.writable = False
        self.quarantined: list[tuple[Path, str]] = []  # (where the part went, why)
        self._lock = None
        self._next = 1

    # opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, output: str | Path, meta: dict) -> VectorStore:
        """Create the store at ``output`` or reopen it for appending.

        ``meta`` must hold :data:`COMPATIBLE_KEYS`; reopening checks they match what the
        store was made with, and raises :class:`StoreError` naming the differences if not.
        The store's lock is taken before its metadata is read or written, so two first runs
        cannot mix. Refuses a target mobilevec did not write.
        """
        output = Path(output)
        root, kind = store_paths(output)
        _refuse_foreign(output, root, kind)
        meta = {**_KEY_DEFAULTS, **meta}
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if not root.is_dir():
                raise StoreError(f"cannot create {root} ({e.strerror or e})") from None
        lock = _take_lock(root, output)
        try:
            meta_path = root / META_NAME
            if meta_path.is_file():
                stored = {**_KEY_DEFAULTS, **_load_meta(meta_path)}
                diff = [k for k in COMPATIBLE_KEYS if stored.get(k) != meta.get(k)]
                if diff:
                    details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {meta.get(k)!r}"
                                        for k in diff)
                    raise StoreError(f"{output} was made with different settings ({details}). "
                                     "Re-run with the same model, weights and options, or "
                                     "write to a new -o")
                meta = stored
                kind = meta.get("kind", kind)
            elif lock is None:
                raise StoreError(f"cannot create a store in {root}: the folder is read-only")
            else:
                meta = {"format": FORMAT, "kind": kind, **meta,
                        "base": os.path.abspath(root.parent),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                try:
                    atomic_write(meta_path, lambda tmp: tmp.write_text(
                        json.dumps(meta, indent=1), encoding="utf-8"))
                except OSError as e:
                    raise StoreError(f"cannot write {meta_path} ({e.strerror or e})") from None
            store = cls(output, root, kind, meta)
            store._lock, store.writable = lock, lock is not None
            try:
                if store.writable:
                    store._recover()
                store._check_parts()
                store._next = store._next_number()
            except OSError as e:
                raise StoreError(f"cannot read or tidy {root} ({e.strerror or e})") from None
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return store

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recover(self) -> None:
        """Finish or undo what a killed run left: temporary files, merges cut short,
        replaced parts, orphan indexes."""
        for folder in (self.root, self.root / "_errors"):
            if folder.is_dir():
                for tmp in folder.glob(f".*{TMP_MARK}*"):
                    tmp.unlink(missing_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith(_MERGING):
                if entry.is_dir():  # swapped: the singles the merged part replaced
                    shutil.rmtree(entry, ignore_errors=True)
                else:  # written, not swapped: the singles are still the live rows
                    entry.unlink(missing_ok=True)
            elif _PART.match(entry.name) and entry.is_dir() and not any(entry.iterdir()):
                entry.rmdir()
        for part in _replaced_parts(self.root, self.codec.suffix):
            log.info("removing %s (already merged)", part)
            part.unlink(missing_ok=True)
            for companion in self.codec.companions(part):
                companion.unlink(missing_ok=True)
        for orphan in self.codec.orphans(self.root):
            orphan.unlink(missing_ok=True)

    def _next_number(self) -> int:
        numbers = [last for _, last, _ in _parts(self.root, self.codec.suffix)]
        numbers += [number for number, _ in _error_parts(self.root)]
        for entry in self.root.iterdir():  # merge folders, hidden merges
            m = _PART.match(entry.name) or re.match(r"^_merge-(\d+)-(\d+)$", entry.name)
            if m:
                numbers.append(int(m.group(2) or m.group(1)))
        return max(numbers, default=0) + 1

    def _check_parts(self) -> None:
        """Read every part's keys; a damaged part is moved to ``_quarantine/`` (or, when
        the store is read-only, reported)."""
        self._done = DoneKeys(self.base)
        for _, _, part in _parts(self.root, self.codec.suffix):
            try:
                self._done.add(self.codec.read_rows(part))
            except _Damaged as e:
                if not self.writable:
                    raise _damaged_error(e) from None
                self.quarantined.append((self._quarantine(part), e.cause))
                log.warning("%s is damaged (%s): moved to %s; its images are embedded again",
                            part, e.cause, self.quarantined[-1][0])

    def _quarantine(self, part: Path) -> Path:
        folder = self.root / QUARANTINE
        folder.mkdir(exist_ok=True)
        target = folder / part.name
        n = 1
        while target.exists():
            target, n = folder / f"{part.name}.{n}", n + 1
        for companion in self.codec.companions(part):
            if companion.exists():
                os.replace(companion, folder / (target.name + companion.suffix))
        os.replace(part, target)
        fsync_dir(part.parent)
        return target

    # writing ------------------------------------------------------------------------------
    def done_keys(self) -> DoneKeys:
        """Keys of every stored row (what a re-run skips): ``key in done_keys()`` matches a
        file by its absolute path or by its path relative to the store's folder."""
        return self._done

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.output} is read-only")

    def append(self, keys: Sequence[Key], vectors: np.ndarray,
               errors: Sequence[tuple[str, str]] = ()) -> None:
        """Commit one batch: ``vectors[i]`` for ``keys[i]``, and (path, reason) failures."""
        self._require_writable()
        number = self._next
        if errors:
            folder = self.root / "_errors"
            folder.mkdir(exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            _write_errors(folder / f"part-{number:06d}.csv",
                          [(p, r, stamp) for p, r in errors])
        if len(keys):
            if vectors.shape != (len(keys), self.meta["dim"]):
                raise ValueError(f"expected ({len(keys)}, {self.meta['dim']}) vectors, got "
                                 f"{vectors.shape}")
            self.codec.write(self.root / f"part-{number:06d}{self.codec.suffix}", keys,
                             vectors, self.base)
            self._done.add(_Rows([k[0] for k in keys],
                                 [_relative(k[0], self.base) for k in keys],
                                 [k[1] for k in keys], [k[2] for k in keys]))
        self._next += 1

    def adopt(self, part: Path) -> Path:
        """Commit a finished part file written elsewhere in this store's folder (e.g. a Ray
        shard with this store's columns) by renaming it into place as the next part."""
        self._require_writable()
        target = self.root / f"part-{self._next:06d}{self.codec.suffix}"
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, target)
        fsync_dir(self.root)
        self._next += 1
        try:
            self._done.add(self.codec.read_rows(target))
        except _Damaged as e:
            raise _damaged_error(e) from None
        return target

    def finish(self, merge: bool = True, prune: bool = False) -> FinishReport:
        """End a run: merge the single-batch parts (unless not ``merge``: parts already
        large), drop rows of files that are gone (``prune``), compact the error history,
        write ``_errors.csv`` (and the npy export).

        A merge or error file that cannot be written (a full disk) is a warning in the
        report, the store stays as it was; only the npy export, which is the output, raises
        :class:`StoreError`.
        """
        self._require_writable()
        report = FinishReport()
        if merge:
            try:
                self._merge()
            except OSError as e:
                report.warnings.append(
                    f"could not merge the parts of {self.output} ({e.strerror or e}); they "
                    "stay as they are, every reader still sees each row once, and a later run "
                    "merges them")
                self._recover()
        if prune:
            try:
                report.pruned = self._prune()
            except OSError as e:
                raise StoreError(f"could not prune {self.output} ({e.strerror or e}); the "
                                 "store is unchanged where not pruned: free space and "
                                 "re-run") from None
        rows = self._all_rows()
        resolve = _resolver(self.meta, self.root)
        keys = [(resolve(p, r), s, m) for part_rows in rows.values()
                for p, r, s, m in zip(part_rows.paths, part_rows.relpaths, part_rows.sizes,
                                      part_rows.mtimes, strict=True)]
        embedded = {k[0] for k in keys}
        try:
            self._write_errors(embedded, prune)
        except OSError as e:
            report.warnings.append(f"could not update {self.errors_csv} ({e.strerror or e})")
        if self.kind == "npy":
            try:
                self._export_npy(keys, [(part, len(r)) for part, r in rows.items()])
            except OSError as e:
                raise StoreError(f"all {len(set(embedded))} images are stored in "
                                 f"{self.root}, but {self.output} could not be written "
                                 f"({e.strerror or e}); free space and re-run (nothing is "
                                 "embedded again)") from None
        return report

    def _all_rows(self) -> dict[Path, _Rows]:
        rows = {}
        for _, _, part in _parts(self.root, self.codec.suffix):
            try:
                rows[part] = self.codec.read_rows(part)
            except _Damaged as e:
                raise _damaged_error(e) from None
        return rows

    def _merge(self) -> None:
        singles = [(first, p) for first, last, p in _parts(self.root, self.codec.suffix)
                   if first == last]
        if len(singles) < 2:
            return
        first, last = singles[0][0], singles[-1][0]
        name = f"part-{first:06d}-{last:06d}{self.codec.suffix}"
        if self.kind == "npy":  # only mobilevec reads the parts folder: the range suffices
            self.codec.write_merged(self.root / name, [p for _, p in singles])
            self._recover()  # deletes the parts the merged one replaces
            return
        if not _can_exchange(self.root):
            log.info("not merging the parts of %s: this file system cannot swap two names "
                     "atomically", self.output)
            return
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        for _, part in singles:  # one rename each: every row stays visible exactly once
            if part.parent != folder:
                os.rename(part, folder / part.name)
        for entry in self.root.iterdir():
            if entry != folder and _PART.match(entry.name) and entry.is_dir():
                with contextlib.suppress(OSError):
                    entry.rmdir()  # an earlier merge folder, emptied above
        fsync_dir(folder)
        fsync_dir(self.root)
        hidden = self.root / f"{_MERGING}{first:06d}-{last:06d}"
        self.codec.write_merged(hidden, [folder / part.name for _, part in singles])
        exchange(hidden, folder)  # readers now see the merged part instead of the singles
        fsync_dir(self.root)
        shutil.rmtree(hidden, ignore_errors=True)

    def _prune(self) -> int:
        """Drop rows that readers hide (an older row of a path) and rows whose file is
        gone; returns how many."""
        rows = self._all_rows()
        resolve = _resolver(self.meta, self.root)
        resolved = {part: [resolve(p, r) for p, r in zip(r.paths, r.relpaths, strict=True)]
                    for part, r in rows.items()}
        newest = {path: (part, i) for part, paths in resolved.items()
                  for i, path in enumerate(paths)}
        masks: dict[Path, np.ndarray] = {}
        for part, paths in resolved.items():
            masks[part] = np.array([newest[p] == (part, i) and os.path.lexists(p)
                                    for i, p in enumerate(paths)], bool)
        dropped = sum(int((~m).sum()) for m in masks.values())
        if not dropped:
            return 0
        if self.kind == "npy":  # one merged part replacing every part, in the range rule
            parts = list(rows)
            first = min(int(_PART.match(p.name).group(1)) for p in parts)
            target = self.root / f"part-{first:06d}-{self._next:06d}{self.codec.suffix}"
            self._next += 1
            self.codec.write_merged(target, parts, [masks[p] for p in parts])
            self._recover()
            return dropped
        for part, mask in masks.items():  # each part replaced whole, atomically
            if mask.all():
                continue
            if not mask.any():
                part.unlink()
                fsync_dir(part.parent)
            else:
                self.codec.write_merged(part, [part], [mask])
        return dropped

    def _write_errors(self, embedded: set[str], prune: bool) -> None:
        """``_errors.csv`` (current failures), and the error history compacted to them."""
        history = list(_iter_error_rows(self.root))
        current: dict[str, tuple[str, str]] = {}
        for path, reason, stamp in history:
            if path not in embedded:
                current[path] = (reason, stamp)
        if prune:
            current = {p: v for p, v in current.items() if os.path.lexists(p)}
        parts = _error_parts(self.root)
        if len(parts) > 1 or len(current) != len(history):
            number = self._next
            self._next += 1
            if current:
                _write_errors(self.root / "_errors" / f"part-{number:06d}.csv",
                              [(p, r, s) for p, (r, s) in sorted(current.items())])
            for _, part in parts:  # the compacted part holds what they said, if it counts
                part.unlink(missing_ok=True)
        rows = sorted((p, r) for p, (r, _) in current.items())
        atomic_write(self.errors_csv, lambda tmp: write_csv(
            tmp, ("path", "reason", "path_raw"),
            [(path_text(p), r, _hex(path_raw(p))) for p, r in rows]))

    def _export_npy(self, keys: list[Key], blocks: list[tuple[Path, int]]) -> None:
        """``vectors.npy`` + ``vectors.index.csv``, newest row per path, streamed part by part."""
        keep = _newest_per_path([k[0] for k in keys])
        mask = np.ones(len(keys), bool) if keep is None else np.isin(np.arange(len(keys)), keep)
        kept = [k for k, m in zip(keys, mask, strict=True) if m]
        index = self.output.with_name(self.output.stem + ".index.csv")
        atomic_write(index, lambda tmp: write_csv(
            tmp, ("path", "size", "mtime_ns", "path_raw"),
            [(path_text(p), s, m, _hex(path_raw(p))) for p, s, m in kept]))

        def write(tmp: Path) -> None:
            out = np.lib.format.open_memmap(tmp, "w+", np.dtype(self.meta["dtype"]),
                                            (len(kept), self.meta["dim"]))
            row = start = 0
            for part, count in blocks:
                block = np.load(part, mmap_mode="r")[mask[start:start + count]]
                out[row:row + len(block)] = block
                row, start = row + len(block), start + count
            out.flush()
            del out
        atomic_write(self.output, write)

    @property
    def errors_csv(self) -> Path:
        if self.kind == "npy":
            return self.output.with_name(self.output.stem + ".errors.csv")
        return self.root / "_errors.csv"


@dataclass
class FinishReport:
    """What :meth:`VectorStore.finish` did beyond the usual: rows pruned, warnings."""

    pruned: int = 0
    warnings: list[str] = field(default_factory=list)


def _take_lock(root: Path, output: Path):
    """The store's lock, held while the returned file is open; None when the folder is
    read-only. Raises :class:`StoreError` when another run holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no protection against two writers
        fcntl = None
    try:
        lock = open(root / LOCK_NAME, "a")  # noqa: SIM115 - held while open
    except OSError as e:
        if e.errno in _READ_ONLY:
            return None
        raise StoreError(f"cannot open {root / LOCK_NAME} ({e.strerror or e})") from None
    if fcntl is not None:
        try:
            # a POSIX record lock, not flock: forked decode workers do not inherit it, so
            # it dies with this process even if orphaned workers linger
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StoreError(f"{output} is being written by another run") from None
    return lock


def _replaced_parts(root: Path, suffix: str) -> list[Path]:
    live = {p for _, _, p in _parts(root, suffix)}
    return [p for p in root.iterdir() if _PART.match(p.name) and p.suffix == suffix
            and p.is_file() and p not in live]


# --- errors -------------------------------------------------------------------------------
def _write_errors(target: Path, rows: Sequence[tuple[str, str, str]]) -> None:
    atomic_write(target, lambda tmp: write_csv(
        tmp, ("path", "reason", "time", "path_raw"),
        [(path_text(p), r, t, _hex(path_raw(p))) for p, r, t in rows]))


def _error_parts(root: Path) -> list[tuple[int, Path]]:
    folder = root / "_errors"
    found = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else ())
             if (m := _ERROR_PART.match(p.name))]
    return sorted(found)


def _iter_error_rows(root: Path) -> Iterator[tuple[str, str, str]]:
    for _, part in _error_parts(root):
        try:
            lines = _read_csv(part)
        except FileNotFoundError:  # compacted meanwhile by a writer
            continue
        except (OSError, ValueError, csv.Error) as e:
            log.warning("skipping %s: %s", part, e)
            continue
        for line in lines:
            text, reason, stamp, raw = (line + ["", "", "", ""])[:4]
            yield path_from(text, _unhex(raw)), reason, stamp


def iter_errors(output: str | Path) -> Iterator[tuple[str, str]]:
    """Every recorded failure (path, reason), oldest first (compacted at the end of each
    run to the latest reason per path)."""
    root, _ = store_paths(output)
    for path, reason, _ in _iter_error_rows(root):
        yield path, reason


def read_errors(output: str | Path, embedded: set[str] | None = None) -> list[tuple[str, str]]:
    """Current failures: the latest reason per path, leaving out paths embedded since
    (``embedded``: the stored paths, read from the store when not given)."""
    embedded = set(read_store(output).paths) if embedded is None else embedded
    latest = {p: r for p, r in iter_errors(output) if p not in embedded}
    return sorted(latest.items())


# --- reading ------------------------------------------------------------------------------
def read_meta(output: str | Path) -> dict:
    """What made the vectors at ``output`` (model, fingerprint, weights, preprocessing...)."""
    root, _ = store_paths(output)
    meta_path = root / META_NAME
    if not meta_path.exists():
        raise StoreError(f"{output}: no vectors here ({meta_path} missing); run "
                         "`mobilevec embed ... -o` first")
    return _load_meta(meta_path)


def read_store(output: str | Path) -> StoredVectors:
    """All rows of ``output`` (newest per path), vectors in their stored dtype.

    Reads without writing (a read-only store is fine) and while a writer merges: a part
    that moves mid-read makes it list the folder again. Raises :class:`StoreError` naming
    a damaged part.
    """
    for attempt in range(5):
        try:
            return _read_store(output)
        except (FileNotFoundError, NotADirectoryError):
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _read_store(output: str | Path) -> StoredVectors:
    meta = read_meta(output)
    root, kind = store_paths(output)
    codec = _codec(kind, meta)
    resolve = _resolver(meta, root)
    keys: list[Key] = []
    parts: list[tuple[Path, int]] = []
    for _, _, part in _parts(root, codec.suffix):
        try:
            rows = codec.read_rows(part)
        except _Damaged as e:
            raise _damaged_error(e) from None
        keys += [(resolve(p, r), s, m) for p, r, s, m in zip(rows.paths, rows.relpaths,
                                                             rows.sizes, rows.mtimes,
                                                             strict=True)]
        parts.append((part, len(rows)))
    # One array for every part's vectors, filled in place: a list of per-part arrays joined
    # at the end held the store twice (4 GB for 10^6 x 1024 float16 rows).
    vectors = np.empty((len(keys), meta["dim"]), np.dtype(meta["dtype"]))
    start = 0
    for part, count in parts:
        try:
            found = codec.read_vectors_into(part, vectors[start:start + count])
        except _Damaged as e:  # keys whole, vectors not: embed's check would pass it
            raise StoreError(f"{e.part} is damaged ({e.cause}); move it into "
                             f"{root / QUARANTINE} (or delete it) and run `mobilevec embed` "
                             "again with the same inputs: it embeds its images again") from None
        if found != count:
            raise StoreError(f"{part}: {found} vectors but {count} index rows; "
                             "the part is damaged: run `mobilevec embed` again to move it "
                             "aside and embed its images again")
        start += count
    keep = _newest_per_path([k[0] for k in keys])
    if keep is not None:
        keys = [keys[i] for i in keep]
        vectors = vectors[keep]
    return StoredVectors([k[0] for k in keys], np.array([k[1] for k in keys], np.int64),
                         np.array([k[2] for k in keys], np.int64), vectors, meta)


def _newest_per_path(paths: list[str]) -> np.ndarray | None:
    """Indices keeping the last row of each path, in order; None when all are unique."""
    if len(set(paths)) == len(paths):
        return None
    last = {p: i for i, p in enumerate(paths)}
    return np.array(sorted(last.values()), dtype=np.intp)
