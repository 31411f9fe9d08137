"""Where embedding runs write vectors: a folder of part files, each finalised atomically.

A Parquet file cannot be appended once closed, and a writer killed by SIGKILL leaves no
footer, so one growing file can never be both resumable and safe. The store is instead a
folder of *parts*; each batch of vectors becomes one part, written to a temporary name,
fsynced, and renamed into place (``os.replace`` is atomic). A part either exists whole or
not at all, so a run killed at any instant loses at most the batch it was writing.

Layout for ``-o vectors.parquet`` (the folder *is* the output; pandas, pyarrow, polars and
DuckDB read it as one dataset because they skip names starting with ``_``)::

    vectors.parquet/
      _mobilevec.json            what made the vectors: model, weights, preprocessing, dtype
      part-000001.parquet        one batch (columns path, size, mtime_ns, model, vector)
      part-000002-000157.parquet parts 2..157 merged at the end of a run (row groups of 8192)
      _errors/part-000003.csv    files that failed in the batch committed as part 3
      _errors.csv                current failures (latest reason per path), rewritten at the end

For ``-o vectors.npy`` the parts (``part-N.npy`` + ``part-N.csv`` index, the index written
first: a part exists iff its ``.npy`` does) live in ``vectors.npy.parts/``, and each run ends
by exporting ``vectors.npy`` (float32 or float16, ``(N, D)``) and ``vectors.index.csv``
(``path,size,mtime_ns``, row i describes ``vectors[i]``), both written atomically.

Merging is crash-safe too: the merged part's name says which parts it replaces, and opening
the store deletes replaced parts and temporary files left by a killed run. Rows are keyed
by (absolute path, size, mtime_ns): a re-run skips files whose key is stored; a file that
changed is embedded again and readers keep the newest row for each path.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import TMP_MARK, atomic_write, fsync_dir, write_csv
from .._optional import require
from ..errors import StoreError

log = logging.getLogger(__name__)

META_NAME = "_mobilevec.json"
FORMAT = "mobilevec-vectors/1"
ROW_GROUP_ROWS = 8192
# What must match for vectors of two runs to be comparable (weights path may move).
COMPATIBLE_KEYS = ("model", "fingerprint", "dim", "dtype", "normalize", "preprocessing",
                   "precision")
# Stores written before a key existed hold its value then.
_KEY_DEFAULTS = {"precision": "fp32"}

Key = tuple[str, int, int]  # (absolute path, size in bytes, mtime in ns)
_PART = re.compile(r"^part-(\d{6,})(?:-(\d{6,}))?\.(parquet|npy)$")


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


def _require_pyarrow():
    pa = require("pyarrow", "parquet", purpose="Parquet output (or -o FILE.npy)")
    return pa, require("pyarrow.parquet", "parquet", purpose="Parquet output")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


# --- part formats ------------------------------------------------------------------------
class _ParquetParts:
    suffix = ".parquet"
    # Dictionary pages only where values repeat: on vectors and paths Arrow builds a
    # dictionary, finds no repeats and falls back, a slower write and a larger part.
    DICTIONARY_COLUMNS = ["model"]

    def __init__(self, dim: int, dtype: str, meta: dict):
        self.pa, self.pq = _require_pyarrow()
        value = self.pa.float16() if dtype == "float16" else self.pa.float32()
        self.schema = self.pa.schema(
            [("path", self.pa.string()), ("size", self.pa.int64()),
             ("mtime_ns", self.pa.int64()), ("model", self.pa.dictionary(
                 self.pa.int32(), self.pa.string())),
             ("vector", self.pa.list_(value, dim))],
            metadata={"mobilevec": json.dumps(meta)})
        self.dtype = np.dtype(dtype)
        self.model = meta["model"]

    def _table(self, keys: Sequence[Key], vectors: np.ndarray):
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(vectors, self.dtype).reshape(-1))
        return pa.table([pa.array([k[0] for k in keys], pa.string()),
                         pa.array([k[1] for k in keys], pa.int64()),
                         pa.array([k[2] for k in keys], pa.int64()),
                         pa.array([self.model] * len(keys), pa.string()).dictionary_encode(),
                         pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])],
                        schema=self.schema)

    def write(self, target: Path, keys: Sequence[Key], vectors: np.ndarray) -> None:
        table = self._table(keys, vectors)
        atomic_write(target, lambda tmp: self.pq.write_table(
            table, tmp, row_group_size=ROW_GROUP_ROWS, use_dictionary=self.DICTIONARY_COLUMNS))

    def write_merged(self, target: Path, sources: list[Path]) -> None:
        def write(tmp: Path) -> None:
            with self.pq.ParquetWriter(tmp, self.schema,
                                       use_dictionary=self.DICTIONARY_COLUMNS) as writer:
                pending, rows = [], 0
                for source in sources:
                    table = self.pq.read_table(source).cast(self.schema)
                    pending.append(table)
                    rows += table.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        writer.write_table(self.pa.concat_tables(pending), ROW_GROUP_ROWS)
                        pending, rows = [], 0
                if pending:
                    writer.write_table(self.pa.concat_tables(pending), ROW_GROUP_ROWS)
        atomic_write(target, write)

    def read_keys(self, part: Path) -> list[Key]:
        t = self.pq.read_table(part, columns=["path", "size", "mtime_ns"])
        return list(zip(t.column("path").to_pylist(), t.column("size").to_pylist(),
                        t.column("mtime_ns").to_pylist(), strict=True))

    def read_vectors(self, part: Path) -> np.ndarray:
        column = self.pq.read_table(part, columns=["vector"]).column("vector").combine_chunks()
        return column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)

    def orphans(self, folder: Path) -> list[Path]:
        return []


class _NpyParts:
    suffix = ".npy"

    def __init__(self, dim: int, dtype: str, meta: dict):
        self.dtype = np.dtype(dtype)

    @staticmethod
    def index_of(part: Path) -> Path:
        return part.with_suffix(".csv")

    def write(self, target: Path, keys: Sequence[Key], vectors: np.ndarray) -> None:
        # index first: a part counts only once its .npy exists
        atomic_write(self.index_of(target),
                      lambda tmp: write_csv(tmp, ("path", "size", "mtime_ns"), keys))
        array = np.ascontiguousarray(vectors, self.dtype)
        atomic_write(target, lambda tmp: _save_npy(tmp, array))

    def write_merged(self, target: Path, sources: list[Path]) -> None:
        keys = [k for s in sources for k in self.read_keys(s)]
        atomic_write(self.index_of(target),
                      lambda tmp: write_csv(tmp, ("path", "size", "mtime_ns"), keys))

        def write(tmp: Path) -> None:
            dim = np.load(sources[0], mmap_mode="r").shape[1]
            out = np.lib.format.open_memmap(tmp, "w+", self.dtype, (len(keys), dim))
            row = 0
            for source in sources:
                block = np.load(source, mmap_mode="r")
                out[row:row + len(block)] = block
                row += len(block)
            out.flush()
            del out
        atomic_write(target, write)

    def read_keys(self, part: Path) -> list[Key]:
        return [(p, int(s), int(m)) for p, s, m in _read_csv(self.index_of(part))]

    def read_vectors(self, part: Path) -> np.ndarray:
        return np.load(part)

    def orphans(self, folder: Path) -> list[Path]:
        return [c for c in folder.glob("part-*.csv") if not c.with_suffix(".npy").exists()]


# --- the store ---------------------------------------------------------------------------
def store_paths(output: str | Path) -> tuple[Path, str]:
    """(folder holding the parts, "parquet" or "npy") for an ``-o`` target."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        return output, "parquet"
    if suffix == ".npy":
        return output.with_name(output.name + ".parts"), "npy"
    if output.is_dir() and (output / META_NAME).exists():  # a parts folder named directly
        meta = json.loads((output / META_NAME).read_text())
        return output, meta.get("kind", "parquet")
    raise StoreError(f"{output}: output must end in .parquet (a folder of Parquet parts) or "
                     ".npy (vectors.npy + vectors.index.csv)")


class VectorStore:
    """An open store (see the module doc). Use :meth:`open`; one writer at a time."""

    def __init__(self, output: Path, root: Path, kind: str, meta: dict):
        self.output, self.root, self.kind, self.meta = output, root, kind, meta
        codec = _ParquetParts if kind == "parquet" else _NpyParts
        self.codec = codec(meta["dim"], meta["dtype"], meta)
        self._lock = None

    # opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, output: str | Path, meta: dict) -> VectorStore:
        """Create the store at ``output`` or reopen it for appending.

        ``meta`` must hold :data:`COMPATIBLE_KEYS`; reopening checks they match what the
        store was made with, and raises :class:`StoreError` naming the differences if not.
        """
        output = Path(output)
        root, kind = store_paths(output)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a mobilevec vector folder; pick "
                             "another -o or remove it")
        meta = {"format": FORMAT, "kind": kind, **_KEY_DEFAULTS, **meta}
        meta_path = root / META_NAME
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            stored = {**_KEY_DEFAULTS, **stored}
            diff = [k for k in COMPATIBLE_KEYS if stored.get(k) != meta.get(k)]
            if diff:
                details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {meta.get(k)!r}"
                                    for k in diff)
                raise StoreError(f"{output} was made with different settings ({details}). "
                                 "Re-run with the same model, weights and options, or write "
                                 "to a new -o")
            meta = stored
        else:
            if root.is_dir() and any(_PART.match(p.name) for p in root.iterdir()):
                raise StoreError(f"{root} holds parts but no {META_NAME}; not a mobilevec "
                                 "store (or damaged): pick another -o")
            root.mkdir(parents=True, exist_ok=True)
            meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
        store = cls(output, root, kind, meta)
        store._acquire()
        store._recover()
        return store

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no protection against two writers
            return
        self._lock = open(self.root / "_lock", "w")  # noqa: SIM115 - held while open
        try:
            # a POSIX record lock, not flock: forked decode workers do not inherit it, so
            # it dies with this process even if orphaned workers linger
            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise StoreError(f"{self.output} is being written by another run") from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recover(self) -> None:
        """Delete what a killed run left: temporary files, replaced parts, orphan indexes."""
        for folder in (self.root, self.root / "_errors"):
            if folder.is_dir():
                for tmp in folder.glob(f".*{TMP_MARK}*"):
                    tmp.unlink(missing_ok=True)
        for part in _replaced_parts(self.root, self.codec.suffix):
            log.info("removing %s (already merged)", part)
            part.unlink(missing_ok=True)
            if self.kind == "npy":
                _NpyParts.index_of(part).unlink(missing_ok=True)
        for orphan in self.codec.orphans(self.root):
            orphan.unlink(missing_ok=True)
        numbers = [last for _, last, _ in _parts(self.root, self.codec.suffix)]
        numbers += [number for number, _ in _error_parts(self.root)]
        self._next = max(numbers, default=0) + 1

    # writing ------------------------------------------------------------------------------
    def done_keys(self) -> set[Key]:
        """Keys of every stored row (what a re-run skips)."""
        keys: set[Key] = set()
        for _, _, part in _parts(self.root, self.codec.suffix):
            keys.update(self.codec.read_keys(part))
        return keys

    def append(self, keys: Sequence[Key], vectors: np.ndarray,
               errors: Sequence[tuple[str, str]] = ()) -> None:
        """Commit one batch: ``vectors[i]`` for ``keys[i]``, and (path, reason) failures."""
        number = self._next
        if errors:
            folder = self.root / "_errors"
            folder.mkdir(exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            atomic_write(folder / f"part-{number:06d}.csv", lambda tmp: write_csv(
                tmp, ("path", "reason", "time"), [(p, r, stamp) for p, r in errors]))
        if len(keys):
            if vectors.shape != (len(keys), self.meta["dim"]):
                raise ValueError(f"expected ({len(keys)}, {self.meta['dim']}) vectors, got "
                                 f"{vectors.shape}")
            self.codec.write(self.root / f"part-{number:06d}{self.codec.suffix}", keys, vectors)
        self._next += 1

    def adopt(self, part: Path) -> Path:
        """Commit a finished part file written elsewhere in this store's folder (e.g. a Ray
        shard with this store's columns) by renaming it into place as the next part."""
        target = self.root / f"part-{self._next:06d}{self.codec.suffix}"
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, target)
        fsync_dir(self.root)
        self._next += 1
        return target

    def finish(self, merge: bool = True) -> None:
        """Merge this store's single-batch parts (unless not ``merge``: parts already large),
        write ``_errors.csv`` (and the npy export)."""
        singles = [p for first, last, p in _parts(self.root, self.codec.suffix) if first == last]
        if merge and len(singles) > 1:
            first = _PART.match(singles[0].name).group(1)
            last = _PART.match(singles[-1].name).group(1)
            merged = self.root / f"part-{first}-{last}{self.codec.suffix}"
            self.codec.write_merged(merged, singles)
            self._recover()  # deletes the parts the merged one replaces
        keys, blocks = self._rows()
        embedded = {k[0] for k in keys}
        errors = read_errors(self.output, embedded)
        atomic_write(self.errors_csv, lambda tmp: write_csv(tmp, ("path", "reason"), errors))
        if self.kind == "npy":
            self._export_npy(keys, blocks)

    def _rows(self) -> tuple[list[Key], list[tuple[Path, int]]]:
        """All stored keys in order, and (part, row count) of each part."""
        keys: list[Key] = []
        blocks: list[tuple[Path, int]] = []
        for _, _, part in _parts(self.root, self.codec.suffix):
            part_keys = self.codec.read_keys(part)
            keys += part_keys
            blocks.append((part, len(part_keys)))
        return keys, blocks

    def _export_npy(self, keys: list[Key], blocks: list[tuple[Path, int]]) -> None:
        """``vectors.npy`` + ``vectors.index.csv``, newest row per path, streamed part by part."""
        keep = _newest_per_path([k[0] for k in keys])
        mask = np.ones(len(keys), bool) if keep is None else np.isin(np.arange(len(keys)), keep)
        kept = [k for k, m in zip(keys, mask, strict=True) if m]
        index = self.output.with_name(self.output.stem + ".index.csv")
        atomic_write(index, lambda tmp: write_csv(tmp, ("path", "size", "mtime_ns"), kept))

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


def _parts(root: Path, suffix: str) -> list[tuple[int, int, Path]]:
    """(first, last, path) of the live parts, in order (merged ranges hide what they cover)."""
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = _PART.match(p.name)
        if m and p.suffix == suffix:
            first = int(m.group(1))
            found.append((first, int(m.group(2) or first), p))
    ranges = [(a, b) for a, b, _ in found if b > a]
    live = [(a, b, p) for a, b, p in found
            if not any(lo <= a and b <= hi and (lo, hi) != (a, b) for lo, hi in ranges)]
    return sorted(live)


def _replaced_parts(root: Path, suffix: str) -> list[Path]:
    live = {p for _, _, p in _parts(root, suffix)}
    return [p for p in root.iterdir() if _PART.match(p.name) and p.suffix == suffix
            and p not in live]


# --- reading ------------------------------------------------------------------------------
def read_meta(output: str | Path) -> dict:
    """What made the vectors at ``output`` (model, fingerprint, weights, preprocessing...)."""
    root, _ = store_paths(output)
    meta_path = root / META_NAME
    if not meta_path.exists():
        raise StoreError(f"{output}: no vectors here ({meta_path} missing); run "
                         "`mobilevec embed ... -o` first")
    return json.loads(meta_path.read_text())


def read_store(output: str | Path) -> StoredVectors:
    """All rows of ``output`` (newest per path), vectors in their stored dtype."""
    meta = read_meta(output)
    root, kind = store_paths(output)
    codec = (_ParquetParts if kind == "parquet" else _NpyParts)(meta["dim"], meta["dtype"],
                                                                 meta)
    keys: list[Key] = []
    blocks: list[np.ndarray] = []
    for _, _, part in _parts(root, codec.suffix):
        part_keys = codec.read_keys(part)
        block = codec.read_vectors(part)
        if len(block) != len(part_keys):
            raise StoreError(f"{part}: {len(block)} vectors but {len(part_keys)} index rows; "
                             "the part is damaged: delete it and re-run embed")
        keys += part_keys
        blocks.append(block)
    vectors = (np.concatenate(blocks) if blocks
               else np.zeros((0, meta["dim"]), np.dtype(meta["dtype"])))
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


def iter_errors(output: str | Path) -> Iterator[tuple[str, str]]:
    """Every recorded failure (path, reason), oldest first, across runs."""
    root, _ = store_paths(output)
    for _, part in _error_parts(root):
        for path, reason, *_ in _read_csv(part):
            yield path, reason


def _error_parts(root: Path) -> list[tuple[int, Path]]:
    folder = root / "_errors"
    found = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else ())
             if (m := re.match(r"^part-(\d+)\.csv$", p.name))]
    return sorted(found)


def read_errors(output: str | Path, embedded: set[str] | None = None) -> list[tuple[str, str]]:
    """Current failures: the latest reason per path, leaving out paths embedded since
    (``embedded``: the stored paths, read from the store when not given)."""
    embedded = set(read_store(output).paths) if embedded is None else embedded
    latest = {p: r for p, r in iter_errors(output) if p not in embedded}
    return sorted(latest.items())
