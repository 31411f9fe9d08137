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
        model.safetensors       converted weights, written by higher layers (under
                                entry_lock); removed whenever the file is replaced
        .download.part          while downloading: the bytes so far (the resume point)
        .download.part.json     ... and the URL, ETag and size they belong to

``entry.json`` holds ``url``, ``key``, ``file`` (the original name), ``size``, ``sha256``,
``sha256_source`` ("registry": the caller gave the hash, e.g. from the registry;
"recorded": none was known, so the first download's hash was recorded and is what later
checks compare against), ``source`` ("download" or "import"), ``final_url`` (after
redirects, or the imported path), ``created`` (UTC, ISO 8601), ``etag``,
``last_modified``, ``content_type`` and ``mtime_ns``.

Verification
    Every download and import is hashed while it is written and checked against the
    expected sha256 before it is renamed into place; a downloaded file that does not match
    is deleted together with everything else in its entry. A warm :func:`fetch` makes no
    network request and does not re-read the file: it checks that entry.json's URL and
    sha256 fit the request and that the file still has the recorded size and modification
    time. Only when the size or mtime changed does it re-hash, and it downloads again when
    the content changed. :func:`verify_entries` re-hashes every file, so it also finds
    corruption that left size and mtime alone.

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
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._io import atomic_write_text, sha256_file
from ..errors import DownloadError, MobilevecError, OfflineError
from . import download as _download
from .archive import GiB, extract_archive

log = logging.getLogger(__name__)

ENV_CACHE = "MOBILEVEC_CACHE"
ENV_OFFLINE = "MOBILEVEC_OFFLINE"
LOCK_TIMEOUT = 600.0  # seconds a process waits for another one's download of the same URL
ENTRY_JSON = "entry.json"
EXTRACTED = "extracted"
SAFETENSORS = "model.safetensors"
PART = ".download.part"
IMPORT_HINT = "mobilevec cache import FILE --as {}"
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
                   final_url=meta.get("final_url"))


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
    return True, "ok"


# --- fetch ---------------------------------------------------------------------------

def fetch(url: str, *, sha256: str | None = None, cache: Path | None = None,
          offline: bool | None = None, progress: bool = False,
          handle: str | None = None) -> Path:
    """The local path of the verified file at ``url`` (http, https or file), cached.

    ``sha256`` (64 hex digits) is the expected hash: a download that does not match
    raises DownloadError and leaves nothing in its entry; without it, the first
    download's hash is recorded and checked from then on. A cached entry is returned
    without any network request. ``offline`` defaults to :func:`is_offline`; offline, a
    missing entry raises OfflineError at once. ``progress`` shows a tqdm bar. ``handle``
    is what the user typed, used only in messages (the import command to offer).

    Raises DownloadError (NetworkError when the connection failed, OfflineError offline).
    A download interrupted mid-way keeps its partial file, and the next call resumes it.
    """
    want = _check_sha256(sha256)
    _check_scheme(url)
    root = _root(cache)
    folder = entry_dir(url, root)
    # Warm path without the lock: reading needs no write access and no waiting.
    path, _ = _cached_file(folder, url, want, may_write=False)
    if path is not None:
        return path
    offline = is_offline() if offline is None else offline
    with _locked(root, url):
        path, why = _cached_file(folder, url, want, may_write=True)
        if path is not None:  # another process finished it while we waited
            return path
        if offline and urlsplit(url).scheme != "file":
            raise _offline_error(url, handle, folder, why)
        if why:
            log.warning("%s: the cached copy in %s is unusable (%s); downloading again",
                        url, folder, why)
        return _download_entry(folder, url, want, progress, handle)


def fetch_extracted(url: str, *, sha256: str | None = None, cache: Path | None = None,
                    offline: bool | None = None, progress: bool = False,
                    handle: str | None = None, max_bytes: int = 2 * GiB,
                    max_files: int = 10_000) -> Path:
    """:func:`fetch` an archive, then the folder it unpacks to (``<entry>/extracted``).

    Extracts once per entry, safely (see :func:`mobilevec.hub.archive.extract_archive`);
    the folder appears complete or not at all. Raises DownloadError as fetch does, or
    when the file is no safe tar/zip archive.
    """
    root = _root(cache)
    with _locked(root, url):
        path = fetch(url, sha256=sha256, cache=root, offline=offline, progress=progress,
                     handle=handle)
        out = path.parent / EXTRACTED
        if not out.is_dir():
            extract_archive(path, out, max_bytes=max_bytes, max_files=max_files)
        return out


def _cached_file(folder: Path, url: str, want: str | None,
                 *, may_write: bool) -> tuple[Path | None, str | None]:
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
    if want and meta["sha256"] != want:
        return None, f"it has sha256 {meta['sha256']} ({meta['sha256_source']}), not {want}"
    if st.st_size != meta["size"]:
        return None, f"{meta['file']} has {st.st_size} bytes, {meta['size']} recorded"
    upgrade = bool(want) and meta.get("sha256_source") != "registry"
    if st.st_mtime_ns == meta.get("mtime_ns") and not upgrade:
        return path, None
    if not may_write:
        return None, "needs a check under the lock"
    if st.st_mtime_ns != meta.get("mtime_ns"):
        digest = sha256_file(path)
        if digest != meta["sha256"]:
            return None, f"{meta['file']} changed on disk (sha256 now {digest})"
        log.info("%s: modified time changed but content is intact", path)
    _write_json(folder / ENTRY_JSON, {**meta, "mtime_ns": st.st_mtime_ns,
                                      "sha256_source": "registry" if want
                                      else meta["sha256_source"]})
    return path, None


def _download_entry(folder: Path, url: str, want: str | None, progress: bool,
                    handle: str | None) -> Path:
    """Download into ``folder`` (the lock is held) and commit the verified file."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        got = _download.download(url, folder / PART, progress=progress)
    except _download.NetworkError as e:
        _remove_if_empty(folder)
        raise _download.NetworkError(_network_message(e, url, handle, folder),
                                     url=url) from e
    except BaseException:
        # Server refusals and interruptions (Ctrl-C) keep any partial file for a resume.
        _remove_if_empty(folder)
        raise
    return _commit(folder, url, got, want, source="download").file


def _commit(folder: Path, url: str, got: _download.Downloaded, want: str | None, *,
            source: str, name: str | None = None) -> CacheEntry:
    """Check ``got``'s hash, then make it the entry's file (replacing any older entry)."""
    part = folder / PART
    if want and got.sha256 != want:
        if source == "download":
            _remove_entry(folder)  # a wrong download leaves nothing behind
        else:
            _download.discard_part(part)  # a wrong import leaves the old entry alone
        raise DownloadError(
            f"{url}: sha256 mismatch: expected {want}, got {got.sha256} ({got.size} bytes)."
            f" The file was discarded. The artifact changed or was damaged in transit;"
            f" retry, and if the new content is trusted, update its sha256.", url=url)
    # entry.json goes first and comes back last, so a crash never leaves a half entry.
    (folder / ENTRY_JSON).unlink(missing_ok=True)
    for child in folder.iterdir():
        if child.name not in (PART, _download.state_path(part).name):
            _remove_path(child)  # the old file and whatever was derived from it
    target = folder / _entry_filename(name or got.filename)
    os.replace(part, target)
    _download.discard_part(part)
    meta = {"format": _ENTRY_FORMAT, "url": url, "key": folder.name, "file": target.name,
            "size": got.size, "sha256": got.sha256,
            "sha256_source": "registry" if want else "recorded", "source": source,
            "final_url": got.final_url, "created": _now(), "etag": got.etag,
            "last_modified": got.last_modified, "content_type": got.content_type,
            "mtime_ns": target.stat().st_mtime_ns}
    _write_json(folder / ENTRY_JSON, meta)
    log.info("cached %s -> %s (sha256 %s, %s)", url, target, got.sha256, meta["sha256_source"])
    return CacheEntry._from_meta(folder, meta)


# --- import / clear ------------------------------------------------------------------

def import_file(path: str | Path, url_or_handle: str, sha256: str | None = None, *,
                cache: Path | None = None) -> CacheEntry:
    """Copy the local file or folder ``path`` into the cache as if downloaded from
    ``url_or_handle`` (a folder is stored as a tar of it, see :func:`_import_folder`).

    A handle is resolved to the URL that ``load`` would fetch (``mobilevec.hub.artifacts``);
    the hash the registry knows for it applies unless ``sha256`` is given. A mismatch
    raises DownloadError and leaves the existing entry, if any, untouched. Replaces the
    entry of that URL otherwise.
    """
    src = Path(path)
    if src.is_dir():
        return _import_folder(src, url_or_handle, sha256, cache)
    if not src.is_file():
        raise DownloadError(f"{src}: no such file or folder to import", path=src)
    return _import(src, url_or_handle, _check_sha256(sha256), cache, origin=src)


def _import(src: Path, url_or_handle: str, sha256: str | None, cache: Path | None, *,
            origin: Path) -> CacheEntry:
    url, known = _resolve(url_or_handle)
    want = sha256 or known
    root = _root(cache)
    folder = entry_dir(url, root)
    with _locked(root, url):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            got = _download.download(src.resolve().as_uri(), folder / PART)
            got = replace(got, final_url=str(origin.resolve()))
            return _commit(folder, url, got, want, source="import", name=src.name)
        finally:
            _remove_if_empty(folder)


def _import_folder(src: Path, url_or_handle: str, sha256: str | None,
                   cache: Path | None) -> CacheEntry:
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
        return _import(tar, url_or_handle, None, cache, origin=src)


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


def _check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _download.SCHEMES:
        raise DownloadError(f"{url}: not a URL mobilevec can fetch (scheme {scheme!r}; use "
                            f"{', '.join(_download.SCHEMES)})", url=url)


def _resolve(url_or_handle: str) -> tuple[str, str | None]:
    """(URL that load() fetches, registry sha256 or None) for a handle or URL."""
    try:
        from .artifacts import resolve_handle
    except ImportError:  # artifact registry not available: URLs only
        resolve_handle = None
    if resolve_handle is not None:
        artifact = resolve_handle(url_or_handle)
        if artifact is not None:
            return artifact.url, artifact.sha256
    if urlsplit(url_or_handle).scheme in _download.SCHEMES:
        return url_or_handle, None
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
    return OfflineError(
        f"offline mode ({ENV_OFFLINE}=1 or offline=True): cannot download {url}; {state}. "
        f"It would be cached in {folder}. To use it offline, download the file on a machine"
        f" with network access and import it: {IMPORT_HINT.format(handle or url)}",
        url=url, path=folder)


def _network_message(e: Exception, url: str, handle: str | None, folder: Path) -> str:
    return (f"{e}. The network failed and no usable copy of {url} is cached ({folder}). "
            f"Check the "
            f"connection or proxy and retry (partial downloads resume), or work offline: "
            f"download the file elsewhere, run `{IMPORT_HINT.format(handle or url)}` and set "
            f"{ENV_OFFLINE}=1.")
