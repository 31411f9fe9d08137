"""Files written whole or not at all, and the sha256 that identifies a weights artifact.

:func:`atomic_write` is the one way mobilevec replaces a file that someone may read: the
content goes to a temporary name in the same folder (``.<name>.tmp-<pid>-<random>``, a
pattern readers skip and stores clean up), is fsynced, renamed over the target
(``os.replace`` is atomic on POSIX and Windows), and the folder is fsynced so that the
rename itself survives a power cut.

:func:`sha256_tree` is the identity of a weights artifact, recorded by vector stores,
exports, run folders and the download cache alike: the sha256 of a file's bytes; for a
folder, the sha256 of the lines ``<relative path>\\t<sha256 of file>\\n`` of its files in
sorted order; for a TF checkpoint prefix (``dir/model.ckpt``, no file of that name), the
same over the prefix's files (``model.ckpt.index``, ``model.ckpt.data-*``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
TMP_MARK = ".tmp-"


def temporary_name(target: Path) -> Path:
    """A fresh temporary path beside ``target`` (hidden, unique per process and call)."""
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable, where the platform allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file, which then replaces ``target``, durably.

    Readers see the old file or the new one, never a part. If ``write`` raises, the
    temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    tmp = temporary_name(target)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def hash_file(digest: Any, path: str | Path, limit: int | None = None) -> int:
    """Feed the bytes of ``path`` (the first ``limit`` of them, when given) to ``digest``;
    returns how many were read (fewer than ``limit`` when the file is shorter)."""
    done = 0
    with open(path, "rb") as f:
        while limit is None or done < limit:
            chunk = f.read(_CHUNK if limit is None else min(_CHUNK, limit - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return done


def sha256_file(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    hash_file(digest, path)
    return digest.hexdigest()


def tree_files(path: str | Path) -> tuple[Path, list[Path]]:
    """``(base, files)`` that make up the artifact at ``path`` (see the module doc); names
    in the digest are relative to ``base``. Raises FileNotFoundError when there are none."""
    path = Path(path)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, sorted(p for p in path.rglob("*") if p.is_file())
    files = sorted(p for p in path.parent.glob(glob.escape(path.name) + ".*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no such file, folder or checkpoint prefix")
    return path.parent, files


def sha256_tree(path: str | Path) -> str:
    """The identity of the weights artifact at ``path``: a file, a folder or a TF
    checkpoint prefix (see the module doc)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    base, files = tree_files(path)
    lines = "".join(f"{p.relative_to(base).as_posix()}\t{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """``header`` then ``rows`` as UTF-8 CSV at ``path`` (wrap in :func:`atomic_write` to
    replace a file that readers may have open)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
