"""The engine cache: exported graphs and compiled engine blobs, so that a warm start compiles
nothing and imports no torch.

Where
    ``<mobilevec cache>/engines/<key>/`` (the download cache's folder, see
    :mod:`mobilevec.hub.cache`), one folder per :class:`EngineKey`: the weights' identity
    (:func:`mobilevec._io.sha256_tree`), the model, the input size, the precision, the
    runtime and its version, and the format of this cache.

Layout of an entry::

    entry.json            written last: the key, every file with its size and sha256, and
                          what the engine needs without the torch module (fingerprint,
                          output size, int8 calibration figures)
    model.xml, model.bin  the exported graph (OpenVINO IR), or model.onnx
    compiled/<name>.blob  compiled engines (one per mode, batch shape and settings), each
    compiled/<name>.json  with the sha256 of its blob

Verification
    Every file of an entry is checked against entry.json (size and sha256) when the entry
    is opened; a blob when it is imported. Anything missing, changed, unreadable or from
    another key is removed and rebuilt: a bad entry is never used and never fails a run.

Concurrency
    An entry is built in a temporary folder and renamed into place whole; a process that
    finds the entry already made by another uses that one. Building takes the entry's
    lock (one builder at a time; the others wait, then find it). Blobs are written
    atomically. Warm reads take no lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_text, sha256_file
from .._version import __version__

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
ENTRY_JSON = "entry.json"
COMPILED = "compiled"
LOCK_TIMEOUT = 600.0


@dataclass(frozen=True)
class EngineKey:
    """What an engine's files depend on; two runs with equal keys share an entry."""

    model: str
    weights_sha256: str
    image_size: tuple[int, int]
    precision: str
    runtime: str
    runtime_version: str

    def digest(self) -> str:
        fields = {**asdict(self), "image_size": list(self.image_size),
                  "format": CACHE_FORMAT, "mobilevec": __version__}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def engines_dir(cache: Path | None = None) -> Path:
    """The engine cache folder (``engines/`` in mobilevec's cache)."""
    from ..hub.cache import cache_dir

    return (Path(cache) if cache is not None else cache_dir()) / "engines"


def cpu_signature() -> str:
    """What compiled blobs depend on beyond the runtime: the machine and its CPU flags."""
    flags = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    text = f"{platform.machine()}|{platform.processor()}|{flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EngineEntry:
    """A complete, verified entry; ``meta`` is its entry.json."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder, self.meta = folder, meta

    def file(self, name: str) -> Path:
        return self.folder / name

    # compiled blobs -----------------------------------------------------------------------
    def _blob_paths(self, name: str) -> tuple[Path, Path]:
        safe = hashlib.sha256(f"{name}|{cpu_signature()}".encode()).hexdigest()[:24]
        folder = self.folder / COMPILED
        return folder / f"{safe}.blob", folder / f"{safe}.json"

    def load_blob(self, name: str) -> bytes | None:
        """The compiled blob ``name`` if it is present and intact, else None (a bad one is
        removed)."""
        blob, record = self._blob_paths(name)
        try:
            data = blob.read_bytes()
            expected = json.loads(record.read_text())
        except (OSError, ValueError):
            return None
        if (not isinstance(expected, dict) or expected.get("name") != name
                or hashlib.sha256(data).hexdigest() != expected.get("sha256")):
            log.warning("%s: compiled engine %s is damaged; compiling again", blob, name)
            self.drop_blob(name)
            return None
        return data

    def save_blob(self, name: str, data: bytes) -> None:
        """Store a compiled blob; a failure (read-only cache, full disk) only costs speed."""
        blob, record = self._blob_paths(name)
        try:
            blob.parent.mkdir(exist_ok=True)
            atomic_write_bytes(blob, data)
            atomic_write_text(record, json.dumps(
                {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))
        except OSError as e:
            log.info("could not store the compiled engine in %s (%s)", blob.parent, e)

    def drop_blob(self, name: str) -> None:
        for path in self._blob_paths(name):
            with suppress(OSError):
                path.unlink()


def _read_entry(folder: Path, key: EngineKey) -> EngineEntry | None:
    """The entry in ``folder`` if it is complete, of ``key``, and every file is intact."""
    try:
        meta = json.loads((folder / ENTRY_JSON).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise _Damaged(f"{ENTRY_JSON} unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("key") != _key_dict(key):
        raise _Damaged("entry.json describes another engine")
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise _Damaged("entry.json lists no files")
    for name, record in files.items():
        path = folder / name
        try:
            if path.stat().st_size != record["size"] or sha256_file(path) != record["sha256"]:
                raise _Damaged(f"{name} changed since it was written")
        except (OSError, KeyError, TypeError) as e:
            raise _Damaged(f"{name} unreadable ({e})") from None
    return EngineEntry(folder, meta)


class _Damaged(Exception):
    """Internal: an entry that exists but must not be used."""


def _key_dict(key: EngineKey) -> dict[str, Any]:
    return {**asdict(key), "image_size": list(key.image_size)}


def _lock(root: Path, digest: str):
    import filelock

    path = root / ".locks" / f"{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(path, timeout=LOCK_TIMEOUT)


def lookup(key: EngineKey, cache: Path | None = None) -> EngineEntry | None:
    """The verified entry of ``key``, or None (a damaged one is removed)."""
    folder = engines_dir(cache) / key.digest()
    try:
        return _read_entry(folder, key)
    except _Damaged as why:
        log.warning("engine cache entry %s is unusable (%s); rebuilding it", folder, why)
        _remove(folder)
        return None


def get_or_build(key: EngineKey, build: Callable[[Path], dict[str, Any]],
                 cache: Path | None = None) -> EngineEntry:
    """The entry of ``key``, built with ``build(folder) -> extra meta`` when absent.

    ``build`` writes the entry's files into ``folder`` (a fresh temporary folder) and
    returns what entry.json should record beside the key and the files. When the cache
    cannot be written, the entry is built in a temporary folder outside it and still
    returned (it is then rebuilt next time).
    """
    entry = lookup(key, cache)
    if entry is not None:
        return entry
    root = engines_dir(cache)
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = _lock(root, key.digest())
        lock.acquire()
    except OSError as e:
        log.warning("engine cache %s is not writable (%s); building in a temporary folder",
                    root, e)
        return _build_into(Path(_temporary_root()) / key.digest(), key, build)
    try:
        entry = lookup(key, cache)  # another process may have built it meanwhile
        if entry is not None:
            return entry
        return _build_into(root / key.digest(), key, build)
    finally:
        lock.release()


def _temporary_root() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="mobilevec-engine-")


def _build_into(final: Path, key: EngineKey, build: Callable[[Path], dict[str, Any]]
                ) -> EngineEntry:
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        extra = build(tmp)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {"format": CACHE_FORMAT, "key": _key_dict(key), "files": files, **extra}
        atomic_write_text(tmp / ENTRY_JSON, json.dumps(meta, indent=1, sort_keys=True))
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built engine cache entry %s for %s", final, key.model)
    return EngineEntry(final, meta)


def _remove(folder: Path) -> None:
    """Move a bad entry aside, then delete it (a reader holding its files keeps them)."""
    if not folder.exists():
        return
    trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def clear(cache: Path | None = None) -> int:
    """Delete every engine cache entry; returns how many."""
    root = engines_dir(cache)
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] \
        if root.is_dir() else []
    for folder in entries:
        _remove(folder)
    return len(entries)
