"""The download cache under ``mobilevec.load(handle)``: layout, locking, verification.

Where
    ``$MOBILEVEC_CACHE`` when set, else the platform's user cache folder for "mobilevec"
    (``~/.cache/mobilevec`` on Linux, ``~/Library/Caches/mobilevec`` on macOS,
    ``%LOCALAPPDATA%\\mobilevec\\Cache`` on Windows).

Layout (one folder per URL)::

    <cache>/
      .locks/<key>.lock         the entry's FileLock; kept outside the entry so that
                                clearing an entry never deletes a lock someone holds
      <key>/                    key = sha256(url.encode()).hexdigest()[:16]
        entry.json              written last: its presence marks a complete entry
        <original file name>    the verified file, e.g. mobilenet_v2_1.0_224.tgz
        extracted/              archives only: the unpacked tree (see fetch_extracted)
        model.safetensors       converted weights, written by higher layers through
                                add_derived; removed whenever the file is replaced
        .download.part          while downloading: the bytes so far (the resume point)
        .download.part.json     ... and the URL, ETag and size they belong to

``entry.json`` holds ``url``, ``key``, ``file`` (the original name), ``size``, ``sha256``,
``sha256_source`` ("registry": the caller gave the hash, e.g. from the registry;
"recorded": none was known, so the first download's hash was recorded and is what later
checks compare against), ``source`` ("download" or "import"), ``final_url`` (after
redirects, or the imported path), ``created`` (UTC, ISO 8601), ``etag``,
``last_modified``, ``content_type`` and ``mtime_ns``; ``md5`` when one was pinned (Keras
publishes md5s); ``archive`` (the archive kind, when unpacked); ``derived``, the sha256 of
every file derived from the original (``extracted/<path>``, ``model.safetensors``); for
``file://`` URLs ``source_mtime_ns``, the source's modification time when it was copied.

Verification
    Every download and import is hashed while it is written and checked against the
    expected sha256 (or pinned md5) before it is renamed into place; a downloaded file that
    does not match is deleted together with everything else in its entry. Without a pinned
    hash, ``fetch(validate=...)`` has the caller check that the bytes are what they should
    be (weights that parse) before anything is committed. A warm :func:`fetch` makes no
    network request and does not re-read the file: it checks that entry.json's URL and
    sha256 fit the request and that the file still has the recorded size and modification
    time (and, for ``file://``, that the source still has the size and mtime it was copied
    with). Only when the size or mtime changed, or with ``rehash=True``, does it re-hash,
    and it downloads again when the content changed. Derived files are checked against
    their recorded sha256 by whoever reads them (:func:`check_derived`,
    :func:`verified_extracted`, :func:`verify_file`: milliseconds at these sizes), so an
    edited file is never served. :func:`verify_entries` re-hashes every file and every
    derived file, so it also finds corruption that left size and mtime alone.

Concurrency
    One :class:`filelock.FileLock` per entry serialises downloads, imports and clears of
    the same URL across processes: one process downloads, the others wait (up to
    ``LOCK_TIMEOUT`` seconds) and then find the finished entry. Warm reads take no lock,
    so a read-only shared cache works.

Offline
    With ``offline=True`` or ``MOBILEVEC_OFFLINE=1`` (also "true", "yes") a cached entry
    is returned and a missing one raises :class:`~mobilevec.errors.OfflineError` before
    any network access; ``file://`` URLs are local and still copied in.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from .._io import atomic_write_text, sha256_file
from ..errors import CorruptCacheError, DownloadError, MobilevecError, OfflineError, WeightsError
from . import download as _download
from .archive import GiB, archive_kind, extract_archive

log = logging.getLogger(__name__)

ENV_CACHE = "MOBILEVEC_CACHE"
ENV_OFFLINE = "MOBILEVEC_OFFLINE"
LOCK_TIMEOUT = 600.0  # seconds a process waits for another one's download of the same URL
ENTRY_JSON = "entry.json"
EXTRACTED = "extracted"
SAFETENSORS = "model.safetensors"
PART = ".download.part"
IMPORT_HINT = "mobilevec cache import FILE --as {}"
CLEAR_HINT = "mobilevec cache clear {}"
_STAGED = ".extracted.new"  # an archive's tree while it is checked, before the commit
_RESERVED = {ENTRY_JSON, EXTRACTED, SAFETENSORS}
_KEY = re.compile(r"[0-9a-f]{16}")
_ENTRY_FORMAT = 1


# --- where ---------------------------------------------------------------------------

def cache_dir() -> Path:
    """The cache folder: ``$MOBILEVEC_CACHE``, else the user cache folder for "mobilevec"."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mobilevec", appauthor=False))


def is_offline() -> bool:
    """True when ``$MOBILEVEC_OFFLINE`` is 1, true or yes (any case)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes"}


def entry_key(url: str) -> str:
    """The entry folder name of ``url``: the first 16 hex digits of its sha256."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def entry_dir(url: str, cache: Path | None = None) -> Path:
    """The folder that holds (or would hold) the entry of ``url``; not created here."""
    return _root(cache) / entry_key(url)


_LOCKS: dict[str, Any] = {}
_LOCKS_GUARD = threading.Lock()


def entry_lock(url: str, cache: Path | None = None) -> Any:
    """The FileLock of ``url``'s entry (one object per process, re-entrant per thread).

    Hold it (``with entry_lock(url):``) to write next to a cached file, e.g. the converted
    ``model.safetensors``. It has no timeout of its own; :func:`fetch` uses LOCK_TIMEOUT.
    """
    return _lock_for_key(_root(cache), entry_key(url))


def _lock_for_key(root: Path, key: str) -> Any:
    import filelock

    path = root / ".locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One FileLock object per path and process: a second object on the same file would
    # not be re-entrant, and a thread taking the lock twice would wait for itself.
    with _LOCKS_GUARD:
        lock = _LOCKS.get(str(path))
        if lock is None:
            lock = _LOCKS[str(path)] = filelock.FileLock(path)
    return lock


# --- entries -------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheEntry:
    """One complete cache entry, as recorded in its entry.json."""

    url: str
    folder: Path
    file: Path
    size: int
    sha256: str
    sha256_source: str  # "registry" or "recorded"
    source: str  # "download" or "import"
    created: str
    final_url: str | None = None
    derived: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    md5: str | None = None  # the publisher's md5, when one was pinned

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def extracted(self) -> Path | None:
        """The unpacked archive, when :func:`fetch_extracted` made one."""
        path = self.folder / EXTRACTED
        return path if path.is_dir() else None

    @property
    def safetensors_path(self) -> Path:
        """Where converted weights for this entry go (they may not exist yet)."""
        return self.folder / SAFETENSORS

    @classmethod
    def _from_meta(cls, folder: Path, meta: dict[str, Any]) -> CacheEntry:
        return cls(url=meta["url"], folder=folder, file=folder / meta["file"],
                   size=meta["size"], sha256=meta["sha256"],
                   sha256_source=meta.get("sha256_source", "recorded"),
                   source=meta.get("source", "download"), created=meta.get("created", ""),
                   final_url=meta.get("final_url"), derived=dict(meta.get("derived") or {}),
                   md5=meta.get("md5"))


def get_entry(url: str, cache: Path | None = None) -> CacheEntry | None:
    """The complete entry of exactly ``url`` (no handle resolution), or None."""
    folder = entry_dir(url, cache)
    meta = _read_meta(folder)
    if not meta or meta.get("url") != url:
        return None
    return CacheEntry._from_meta(folder, meta)


def list_entries(cache: Path | None = None) -> list[CacheEntry]:
    """Every complete entry, oldest first. Unfinished downloads are not listed."""
    entries = []
    for folder in _entry_folders(_root(cache)):
        meta = _read_meta(folder)
        if meta is None:
            log.debug("%s: no readable %s (unfinished download?)", folder, ENTRY_JSON)
            continue
        entries.append(CacheEntry._from_meta(folder, meta))
    return sorted(entries, key=lambda e: (e.created, e.url))


def verify_entries(cache: Path | None = None) -> list[tuple[CacheEntry, bool, str]]:
    """Re-hash every cached file: ``(entry, ok, reason)`` per entry, reason "ok" when ok.

    Reads every byte; changes nothing (remove bad entries with :func:`clear`, or fetch
    again: :func:`fetch` replaces an entry whose size or mtime changed).
    """
    return [(e, *_verify(e)) for e in list_entries(cache)]


def _verify(entry: CacheEntry) -> tuple[bool, str]:
    if entry.key != entry_key(entry.url):
        return False, f"folder {entry.key} does not belong to {entry.url}"
    if not entry.file.is_file():
        return False, f"{entry.file.name} is missing"
    size = entry.file.stat().st_size
    if size != entry.size:
        return False, f"{entry.file.name} has {size} bytes, {entry.size} recorded"
    digest = sha256_file(entry.file)
    if digest != entry.sha256:
        return False, (f"{entry.file.name} is corrupt: sha256 {digest}, "
                       f"{entry.sha256} {entry.sha256_source}")
    problem = _derived_problem(entry.folder, entry.derived, None)
    return (False, problem) if problem else (True, "ok")


def _derived_files(folder: Path) -> list[str]:
    """Relative paths of the files derived from an entry's original that exist now."""
    names = [SAFETENSORS] if (folder / SAFETENSORS).exists() else []
    extracted = folder / EXTRACTED
    if extracted.is_dir():
        names += [f"{EXTRACTED}/{p.relative_to(extracted).as_posix()}"
                  for p in sorted(extracted.rglob("*")) if not p.is_dir()]
    return names


def _derived_problem(folder: Path, recorded: dict[str, str],
                     only: Callable[[str], bool] | None) -> str | None:
    """Why the derived files (those ``only`` accepts, default all) do not match their
    record, or None when every one of them exists, is a plain file and has its sha256."""
    present = [n for n in _derived_files(folder) if only is None or only(n)]
    for name in present:
        if name not in recorded:
            return f"{name} is not recorded in {ENTRY_JSON} (added, or left by an older version)"
    for name, digest in recorded.items():
        if only is not None and not only(name):
            continue
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing or not a plain file"
        actual = sha256_file(path)
        if actual != digest:
            return f"{name} was changed: sha256 {actual}, {digest} recorded"
    return None


def _hash_tree(folder: Path, sub: str) -> dict[str, str]:
    base = folder / sub
    return {f"{sub}/{p.relative_to(base).as_posix()}": sha256_file(p)
            for p in sorted(base.rglob("*")) if p.is_file()}


def _corrupt(folder: Path, url: str, why: str, handle: str | None) -> CorruptCacheError:
    return CorruptCacheError(
        f"{folder}: the cached copy of {url} was changed after it was cached ({why}). It is "
        f"not used; load again to rebuild it, or remove the entry with "
        f"`{CLEAR_HINT.format(handle or url)}`.", url=url, path=folder)


# --- derived files ---------------------------------------------------------------------

def add_derived(url: str, name: str, write: Callable[[Path], object],
                cache: Path | None = None) -> Path:
    """Write a file derived from the entry of ``url`` (``write(path)``, e.g. the converted
    ``model.safetensors``) and record its sha256 in entry.json, under the entry's lock."""
    root = _root(cache)
    folder = entry_dir(url, root)
    with _locked(root, url):
        meta = _read_meta(folder)
        if meta is None or meta.get("url") != url:
            raise DownloadError(f"{url}: no cache entry to add {name} to", url=url)
        target = folder / name
        write(target)
        meta["derived"] = {**(meta.get("derived") or {}), name: sha256_file(target)}
        _write_json(folder / ENTRY_JSON, meta)
    return target


def check_derived(url: str, name: str, cache: Path | None = None,
                  handle: str | None = None) -> Path | None:
    """The derived file ``name`` of ``url``'s entry when it matches its recorded sha256;
    None when it does not exist. Raises CorruptCacheError when it was changed or was never
    recorded (nothing unverified is ever returned)."""
    folder = entry_dir(url, cache)
    path = folder / name
    if not path.exists():
        return None
    meta = _read_meta(folder) or {}
    recorded = meta.get("derived") or {}
    problem = _derived_problem(folder, {k: v for k, v in recorded.items() if k == name},
                               lambda n: n == name)
    if problem:
        raise _corrupt(folder, url, problem, handle)
    return path


def verified_extracted(url: str, cache: Path | None = None,
                       handle: str | None = None) -> Path:
    """The entry's unpacked folder after checking every file in it against entry.json (no
    file missing, changed or added). Raises CorruptCacheError otherwise."""
    folder = entry_dir(url, cache)
    meta = _read_meta(folder) or {}
    recorded = {k: v for k, v in (meta.get("derived") or {}).items()
                if k.startswith(EXTRACTED + "/")}
    problem = _derived_problem(folder, recorded, lambda n: n.startswith(EXTRACTED + "/"))
    if problem or not recorded:
        raise _corrupt(folder, url, problem or f"{EXTRACTED}/ has no recorded files", handle)
    return folder / EXTRACTED


def verify_file(url: str, cache: Path | None = None, handle: str | None = None) -> Path:
    """The entry's original file after a full re-hash against entry.json (and the registry
    hash it was checked against). Raises CorruptCacheError when it changed."""
    folder = entry_dir(url, cache)
    meta = _read_meta(folder)
    if meta is None or meta.get("url") != url:
        raise _corrupt(folder, url, f"{ENTRY_JSON} is missing or unreadable", handle)
    path = folder / meta["file"]
    digest = sha256_file(path) if path.is_file() and not path.is_symlink() else None
    if digest != meta["sha256"]:
        raise _corrupt(folder, url, f"{meta['file']} has sha256 {digest}, {meta['sha256']} "
                       "recorded", handle)
    return path


def drop_derived(url: str, cache: Path | None = None) -> None:
    """Remove every file derived from the entry's original (the unpacked tree, the converted
    weights) and their records; the next fetch with ``unpack`` and the next load rebuild
    them from the (re-verified) original."""
    root = _root(cache)
    folder = entry_dir(url, root)
    with _locked(root, url):
        meta = _read_meta(folder)
        for name in (SAFETENSORS, EXTRACTED, _STAGED):
            _remove_path(folder / name)
        if meta is not None and meta.get("url") == url:
            meta["derived"] = {}
            _write_json(folder / ENTRY_JSON, meta)


# --- fetch ---------------------------------------------------------------------------

Validator = Callable[[Path], object]


def fetch(url: str, *, sha256: str | None = None, cache: Path | None = None,
          offline: bool | None = None, progress: bool = False,
          handle: str | None = None, md5: str | None = None, size: int | None = None,
          validate: Validator | None = None, unpack: bool = False,
          rehash: bool = False, max_unpacked_bytes: int = 2 * GiB,
          max_unpacked_files: int = 10_000) -> Path:
    """The local path of the verified file at ``url`` (http, https or file), cached.

    ``sha256`` (64 hex digits) is the expected hash: a download that does not match
    raises DownloadError and leaves nothing in its entry; ``md5`` is a pinned md5 (for
    publishers that give only that), checked the same way. Without either, the first
    download's hash is recorded and checked from then on, and ``validate(path)`` (when
    given) must accept the download before it is committed: it raises WeightsError to
    refuse it, which reaches the caller, and then nothing is cached. ``size`` is the exact size
    when known (a larger answer is cut off early). ``unpack`` unpacks an archive into
    ``extracted/`` as part of the commit (``validate`` then gets that folder), and
    recreates a missing unpacked tree from the verified archive, within
    ``max_unpacked_bytes`` and ``max_unpacked_files``. ``rehash`` re-hashes the cached file
    even when its size and mtime look unchanged.

    A cached entry is returned without any network request. ``offline`` defaults to
    :func:`is_offline`; offline, a missing entry raises OfflineError at once. ``progress``
    shows a tqdm bar. ``handle`` is what the user typed, used only in messages.

    Raises DownloadError (NetworkError when the connection failed, OfflineError offline).
    A download interrupted mid-way keeps its partial file, and the next call resumes it.
    """
    want = _check_sha256(sha256)
    want_md5 = _check_md5(md5)
    _check_scheme(url)
    root = _root(cache)
    folder = entry_dir(url, root)
    pins = _Pins(want, want_md5, size)
    limits = {"max_bytes": max_unpacked_bytes, "max_files": max_unpacked_files}
    # Warm path without the lock: reading needs no write access and no waiting.
    if not rehash:
        path, _ = _cached_file(folder, url, pins, may_write=False, unpack=unpack,
                               limits=limits)
        if path is not None:
            return path
    offline = is_offline() if offline is None else offline
    with _locked(root, url):
        path, why = _cached_file(folder, url, pins, may_write=True, unpack=unpack,
                                 rehash=rehash, limits=limits)
        if path is not None:  # another process finished it while we waited
            return path
        if offline and urlsplit(url).scheme != "file":
            raise _offline_error(url, handle, folder, why)
        if why:
            log.warning("%s: the cached copy in %s is unusable (%s); downloading again",
                        url, folder, why)
        return _download_entry(folder, url, pins, progress, handle, validate,
                               limits if unpack else None)


@dataclass(frozen=True)
class _Pins:
    """What a download must match: a sha256, an md5, a size (each None when unknown)."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    @property
    def pinned(self) -> bool:
        return bool(self.sha256 or self.md5)


def fetch_extracted(url: str, *, sha256: str | None = None, cache: Path | None = None,
                    offline: bool | None = None, progress: bool = False,
                    handle: str | None = None, max_bytes: int = 2 * GiB,
                    max_files: int = 10_000, md5: str | None = None,
                    validate: Validator | None = None) -> Path:
    """:func:`fetch` an archive, then the folder it unpacks to (``<entry>/extracted``).

    Extracts once per entry, safely (see :func:`mobilevec.hub.archive.extract_archive`),
    recording the sha256 of every extracted file; the folder appears complete or not at
    all. Raises DownloadError as fetch does, or when the file is no safe tar/zip archive.
    """
    root = _root(cache)
    with _locked(root, url):
        path = fetch(url, sha256=sha256, cache=root, offline=offline, progress=progress,
                     handle=handle, md5=md5, validate=validate, unpack=True,
                     max_unpacked_bytes=max_bytes, max_unpacked_files=max_files)
        out = path.parent / EXTRACTED
        if not out.is_dir():
            raise DownloadError(f"{path}: not a tar, tar.gz or zip archive (by content)",
                                url=url, path=path)
        return out


def _cached_file(folder: Path, url: str, pins: _Pins, *, may_write: bool,
                 unpack: bool = False, rehash: bool = False,
                 limits: dict[str, int] | None = None) -> tuple[Path | None, str | None]:
    """(file, None) when the entry serves this request; else (None, why) with why None
    when there is no entry at all. Re-hashes (and records the new mtime) only when
    ``may_write``, i.e. under the lock; without it a changed mtime just means "no"."""
    meta = _read_meta(folder)
    if meta is None:
        return None, (f"{ENTRY_JSON} is unreadable" if (folder / ENTRY_JSON).exists()
                      else None)
    if meta.get("url") != url:
        return None, f"the entry belongs to {meta.get('url')}"
    path = folder / meta["file"]
    try:
        st = path.stat()
    except OSError:
        return None, f"{meta['file']} is missing"
    if pins.sha256 and meta["sha256"] != pins.sha256:
        return None, f"it has sha256 {meta['sha256']} ({meta['sha256_source']}), not {pins.sha256}"
    if pins.md5 and meta.get("md5") not in (None, pins.md5):
        return None, f"it has md5 {meta.get('md5')}, not the pinned {pins.md5}"
    if st.st_size != meta["size"]:
        return None, f"{meta['file']} has {st.st_size} bytes, {meta['size']} recorded"
    if why := _source_changed(url, meta):
        return None, why
    upgrade = (bool(pins.sha256) and meta.get("sha256_source") != "registry") or (
        bool(pins.md5) and meta.get("md5") is None)
    unpacked = not unpack or not _is_archive(path, meta) or (
        (folder / EXTRACTED).is_dir() and any(
            k.startswith(EXTRACTED + "/") for k in (meta.get("derived") or {})))
    if st.st_mtime_ns == meta.get("mtime_ns") and not upgrade and not rehash and unpacked:
        return path, None
    if not may_write:
        return None, "needs a check under the lock"
    if st.st_mtime_ns != meta.get("mtime_ns") or rehash or upgrade:
        digest = sha256_file(path)
        if digest != meta["sha256"]:
            return None, f"{meta['file']} changed on disk (sha256 now {digest})"
        if pins.md5 and meta.get("md5") is None and _md5_file(path) != pins.md5:
            return None, f"{meta['file']} does not have the pinned md5 {pins.md5}"
        if st.st_mtime_ns != meta.get("mtime_ns"):
            log.info("%s: modified time changed but content is intact", path)
    meta = {**meta, "mtime_ns": st.st_mtime_ns,
            "sha256_source": "registry" if pins.sha256 else meta["sha256_source"]}
    if pins.md5:
        meta["md5"] = pins.md5
    if not unpacked:  # an archive whose tree is missing or unrecorded: unpack it again
        for name in (EXTRACTED, _STAGED):
            _remove_path(folder / name)
        extract_archive(path, folder / EXTRACTED, **(limits or {}))
        derived = {k: v for k, v in (meta.get("derived") or {}).items()
                   if not k.startswith(EXTRACTED + "/")}
        meta["derived"] = {**derived, **_hash_tree(folder, EXTRACTED)}
        meta["archive"] = archive_kind(path)
    _write_json(folder / ENTRY_JSON, meta)
    return path, None


def _is_archive(path: Path, meta: dict[str, Any]) -> bool:
    if "archive" in meta:
        return bool(meta["archive"])
    try:
        return archive_kind(path) is not None
    except OSError:
        return False


def _source_changed(url: str, meta: dict[str, Any]) -> str | None:
    """Why a ``file://`` entry no longer reflects its source (size or mtime changed)."""
    if urlsplit(url).scheme != "file" or meta.get("source_mtime_ns") is None:
        return None
    try:
        st = Path(url2pathname(urlsplit(url).path)).stat()
    except OSError:
        return None  # the source is gone: the cached copy is all there is
    if st.st_size != meta["size"] or st.st_mtime_ns != meta["source_mtime_ns"]:
        return "the local source changed since it was copied (size or modification time)"
    return None


def _download_entry(folder: Path, url: str, pins: _Pins, progress: bool,
                    handle: str | None, validate: Validator | None,
                    unpack: dict[str, int] | None) -> Path:
    """Download into ``folder`` (the lock is held) and commit the verified file."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        got = _download.download(url, folder / PART, progress=progress, max_size=pins.size)
    except _download.NetworkError as e:
        _remove_if_empty(folder)
        raise _download.NetworkError(_network_message(e, url, handle, folder),
                                     url=url) from e
    except BaseException:
        # Server refusals and interruptions (Ctrl-C) keep any partial file for a resume.
        _remove_if_empty(folder)
        raise
    return _commit(folder, url, got, pins, source="download", validate=validate,
                   unpack=unpack).file


def _commit(folder: Path, url: str, got: _download.Downloaded, pins: _Pins, *,
            source: str, name: str | None = None, validate: Validator | None = None,
            unpack: dict[str, int] | None = None) -> CacheEntry:
    """Check ``got`` (hashes, size, then ``validate`` when nothing is pinned), then make it
    the entry's file (replacing any older entry) with its unpacked tree when ``unpack``
    (the extraction limits) is given."""
    part = folder / PART

    def refuse(message: str) -> DownloadError:
        _remove_path(folder / _STAGED)
        if source == "download":
            _remove_entry(folder)  # a wrong download leaves nothing behind
        else:
            _download.discard_part(part)  # a wrong import leaves the old entry alone
        return DownloadError(message, url=url)

    if pins.sha256 and got.sha256 != pins.sha256:
        raise refuse(
            f"{url}: sha256 mismatch: expected {pins.sha256}, got {got.sha256} ({got.size} "
            f"bytes). The file was discarded. The artifact changed or was damaged in transit;"
            f" retry, and if the new content is trusted, update its sha256.")
    if pins.md5 and got.md5 != pins.md5:
        raise refuse(
            f"{url}: md5 mismatch: expected {pins.md5} (the publisher's), got {got.md5} "
            f"({got.size} bytes). The file was discarded; retry, or check the URL.")
    if pins.size is not None and got.size != pins.size:
        raise refuse(f"{url}: {got.size} bytes, the artifact has {pins.size}; the file was "
                     "discarded")
    kind = archive_kind(part) if unpack is not None else None
    try:
        if kind:
            staged = extract_archive(part, folder / _STAGED, **unpack)
        if validate is not None and not pins.pinned:
            validate(folder / _STAGED if kind else part)
    except WeightsError as e:  # the content's fault: reported as such, nothing kept
        refuse("")
        raise WeightsError(url, f"the download is not a weights artifact mobilevec can read "
                           f"({e}); nothing was cached", e.variable) from e
    except DownloadError as e:
        raise refuse(f"{url}: the download cannot be unpacked safely ({e}); nothing was "
                     "cached") from e
    # entry.json goes first and comes back last, so a crash never leaves a half entry.
    (folder / ENTRY_JSON).unlink(missing_ok=True)
    for child in folder.iterdir():
        if child.name not in (PART, _download.state_path(part).name, _STAGED):
            _remove_path(child)  # the old file and whatever was derived from it
    target = folder / _entry_filename(name or got.filename)
    os.replace(part, target)
    _download.discard_part(part)
    derived: dict[str, str] = {}
    if kind:
        os.replace(staged, folder / EXTRACTED)
        derived = _hash_tree(folder, EXTRACTED)
    meta = {"format": _ENTRY_FORMAT, "url": url, "key": folder.name, "file": target.name,
            "size": got.size, "sha256": got.sha256,
            "sha256_source": "registry" if pins.sha256 else "recorded", "source": source,
            "final_url": got.final_url, "created": _now(), "etag": got.etag,
            "last_modified": got.last_modified, "content_type": got.content_type,
            "mtime_ns": target.stat().st_mtime_ns, "derived": derived}
    if unpack is not None:
        meta["archive"] = kind
    if pins.md5:
        meta["md5"] = pins.md5
    if got.source_mtime_ns is not None and urlsplit(url).scheme == "file":
        meta["source_mtime_ns"] = got.source_mtime_ns
    _write_json(folder / ENTRY_JSON, meta)
    log.info("cached %s -> %s (sha256 %s, %s)", url, target, got.sha256, meta["sha256_source"])
    return CacheEntry._from_meta(folder, meta)


# --- import / clear ------------------------------------------------------------------

def import_file(path: str | Path, url_or_handle: str, sha256: str | None = None, *,
                cache: Path | None = None, validate: Validator | None = None,
                unpack: bool = False) -> CacheEntry:
    """Copy the local file or folder ``path`` into the cache as if downloaded from
    ``url_or_handle`` (a folder is stored as a tar of it, see :func:`_import_folder`).

    A handle is resolved to the URL that ``load`` would fetch (``mobilevec.hub.artifacts``);
    the hashes the registry knows for it apply unless ``sha256`` is given. A mismatch, or
    a ``validate`` that refuses an unpinned file (see :func:`fetch`), raises DownloadError
    and leaves the existing entry, if any, untouched. Replaces the entry of that URL
    otherwise (unpacked at once with ``unpack``).
    """
    src = Path(path)
    if src.is_dir():
        return _import_folder(src, url_or_handle, sha256, cache, validate, unpack)
    if not src.is_file():
        raise DownloadError(f"{src}: no such file or folder to import", path=src)
    return _import(src, url_or_handle, sha256, cache, origin=src, validate=validate,
                   unpack=unpack)


def _import(src: Path, url_or_handle: str, sha256: str | None, cache: Path | None, *,
            origin: Path, validate: Validator | None = None,
            unpack: bool = False) -> CacheEntry:
    url, known = _resolve(url_or_handle)
    given = _check_sha256(sha256)
    pins = _Pins(given or known.sha256, None if given else known.md5,
                 None if given else known.size)
    root = _root(cache)
    folder = entry_dir(url, root)
    with _locked(root, url):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            got = _download.download(src.resolve().as_uri(), folder / PART)
            got = replace(got, final_url=str(origin.resolve()), source_mtime_ns=None)
            return _commit(folder, url, got, pins, source="import", name=src.name,
                           validate=validate, unpack={} if unpack else None)
        finally:
            _remove_if_empty(folder)


def _import_folder(src: Path, url_or_handle: str, sha256: str | None, cache: Path | None,
                   validate: Validator | None = None, unpack: bool = False) -> CacheEntry:
    """A folder artifact (an .npy folder, a SavedModel) is cached as the deterministic tar
    of it (:func:`~mobilevec.hub.archive.pack_folder`), with an .npy folder's manifest
    beside it (``<folder>.MANIFEST.tsv``), and unpacked on first use like any archive.
    ``sha256``, when given, is the folder's own identity (:func:`mobilevec._io.sha256_tree`)."""
    import tempfile

    from .._io import sha256_tree
    from ..formats.npy import MANIFEST_NAME
    from .archive import pack_folder

    want = _check_sha256(sha256)
    if want is not None and (actual := sha256_tree(src)) != want:
        raise DownloadError(f"{src}: sha256 mismatch: the folder's sha256 (mobilevec's tree "
                            f"hash) is {actual}, not {want}; nothing was imported", path=src)
    beside = src.with_name(f"{src.name}.{MANIFEST_NAME}")
    root = _root(cache)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".import-") as tmp:
        tar = pack_folder(src, Path(tmp) / f"{src.name}.tar",
                          (beside,) if beside.is_file() else ())
        return _import(tar, url_or_handle, None, cache, origin=src, validate=validate,
                       unpack=unpack)


def clear(url: str | None = None, *, cache: Path | None = None) -> int:
    """Delete the entry of ``url`` (a URL or handle), or every entry when None.

    Returns how many entry folders were removed. Only entry folders are touched, never
    other files that happen to live in the cache folder.
    """
    root = _root(cache)
    if url is None:
        folders = list(_entry_folders(root))
    else:
        urls = {url}
        with contextlib.suppress(MobilevecError):
            urls.add(_resolve(url)[0])
        local = Path(url).expanduser()
        if local.is_file():  # a local archive's entry is keyed by its file:// URL
            urls.add(local.resolve().as_uri())
        folders = [entry_dir(u, root) for u in urls if entry_dir(u, root).is_dir()]
    for folder in folders:
        with _locked_key(root, folder.name):
            _remove_entry(folder)
    log.info("cleared %d cache entries in %s", len(folders), root)
    return len(folders)


# --- helpers -------------------------------------------------------------------------

def _root(cache: Path | None) -> Path:
    return Path(cache) if cache is not None else cache_dir()


def _entry_folders(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and _KEY.fullmatch(child.name):
            yield child


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


def _check_md5(md5: str | None) -> str | None:
    if md5 is None:
        return None
    value = md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
    return value


def _md5_file(path: Path) -> str:
    from .._io import hash_file

    digest = hashlib.md5(usedforsecurity=False)
    hash_file(digest, path)
    return digest.hexdigest()


def _check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _download.SCHEMES:
        raise DownloadError(f"{url}: not a URL mobilevec can fetch (scheme {scheme!r}; use "
                            f"{', '.join(_download.SCHEMES)})", url=url)


def _resolve(url_or_handle: str) -> tuple[str, _Pins]:
    """(URL that load() fetches, what the registry pins for it) for a handle or URL."""
    try:
        from .artifacts import resolve_handle
    except ImportError:  # artifact registry not available: URLs only
        resolve_handle = None
    if resolve_handle is not None:
        artifact = resolve_handle(url_or_handle)
        if artifact is not None:
            return artifact.url, _Pins(artifact.sha256, artifact.md5, artifact.size)
    if urlsplit(url_or_handle).scheme in _download.SCHEMES:
        return url_or_handle, _Pins()
    raise MobilevecError(f"{url_or_handle!r} is neither a URL (http, https, file) nor a "
                         f"handle mobilevec knows")


@contextlib.contextmanager
def _locked(root: Path, url: str) -> Iterator[None]:
    with _locked_key(root, entry_key(url), url):
        yield


@contextlib.contextmanager
def _locked_key(root: Path, key: str, url: str | None = None) -> Iterator[None]:
    import filelock

    try:
        lock = _lock_for_key(root, key)
        lock.acquire(timeout=LOCK_TIMEOUT)
    except filelock.Timeout as e:
        raise DownloadError(
            f"{lock.lock_file}: another process has held this cache lock for "
            f"{LOCK_TIMEOUT:.0f} s{f' (fetching {url})' if url else ''}. If no other mobilevec"
            f" process is running, delete the lock file and retry.", url=url) from e
    except OSError as e:  # e.g. a read-only shared cache that lacks this entry
        raise DownloadError(f"{root}: cannot lock the cache folder ({e}); make it writable "
                            f"or set {ENV_CACHE} to a writable folder", url=url,
                            path=root) from e
    try:
        yield
    finally:
        lock.release()


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / ENTRY_JSON).read_text())
    except (OSError, ValueError):
        return None
    needed = ("url", "file", "size", "sha256")
    return meta if isinstance(meta, dict) and all(k in meta for k in needed) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def _entry_filename(name: str) -> str:
    name = _download.safe_filename(name)
    return f"download-{name}" if name in _RESERVED else name


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_entry(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _offline_error(url: str, handle: str | None, folder: Path, why: str | None) -> OfflineError:
    state = f"its cached copy is unusable ({why})" if why else "it is not in the cache"
    clear = (f" Remove the bad copy with `{CLEAR_HINT.format(handle or url)}` and load it "
             "again with network access, or import a good copy." if why else "")
    return OfflineError(
        f"offline mode ({ENV_OFFLINE}=1 or offline=True): cannot download {url}; {state}.{clear}"
        f" It would be cached in {folder}. To use it offline, download the file on a machine"
        f" with network access and import it: {IMPORT_HINT.format(handle or url)}",
        url=url, path=folder)


def _network_message(e: Exception, url: str, handle: str | None, folder: Path) -> str:
    return (f"{e}. The network failed and no usable copy of {url} is cached ({folder}). "
            f"Check the "
            f"connection or proxy and retry (partial downloads resume), or work offline: "
            f"download the file elsewhere, run `{IMPORT_HINT.format(handle or url)}` and set "
            f"{ENV_OFFLINE}=1.")
