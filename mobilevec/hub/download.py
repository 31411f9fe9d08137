"""Streaming one URL into one partial file: HTTP(S) and file://, resume, redirects, hashing.

This module knows nothing about the cache layout. :func:`download` writes the bytes of a
URL into a ``part`` file chosen by the caller (appending to it when the server can resume),
hashes every byte, fsyncs, and reports what it got in a :class:`Downloaded`. The caller
checks the hash and renames the part into place (see :mod:`mobilevec.hub.cache`).

Resuming: next to ``part`` a small ``<part>.json`` records the URL and the validators the
server sent (ETag, Last-Modified, total size) as soon as the headers arrive. A later call
finding both sends ``Range: bytes=N-`` (and ``If-Range`` with the validator, so a changed
file comes back whole rather than spliced); a ``206`` whose range starts at N is appended,
anything else starts over.

Bounds: every connect and read times out after ``timeout`` seconds without data; the
transfer as a whole must keep at least :data:`MIN_RATE` bytes/s over every window of
:data:`RATE_WINDOW` seconds (a server that drips one byte a second is cut off, and the
next call resumes); the body may not exceed ``max_size`` bytes (default
:data:`MAX_DOWNLOAD_BYTES`; the exact size for artifacts whose size is known), checked
against Content-Length before the body and against the bytes while they arrive. An answer
whose Content-Type is ``text/html`` is refused before its body is read: artifacts are
never HTML, login and error pages are.

Failures of the connection itself (refused, DNS, timeout, cut mid-stream, too slow) raise
:class:`NetworkError`; answers the server gave on purpose (404, 500, too many redirects, an
HTML page, too large) raise plain :class:`~mobilevec.errors.DownloadError`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .._io import hash_file
from ..errors import DownloadError, NetworkError

log = logging.getLogger(__name__)

CHUNK = 1 << 18
DEFAULT_TIMEOUT = 60.0  # seconds without progress on connect or on any read
MIN_RATE = 16 * 1024  # bytes/s the transfer must keep over each RATE_WINDOW
RATE_WINDOW = 60.0
MAX_DOWNLOAD_BYTES = 1 << 30  # no MobileNet artifact comes near (a TF-Slim tarball: ~100 MB)
MAX_REDIRECTS = 10  # tfhub.dev -> Kaggle -> storage takes about 3
USER_AGENT = "mobilevec (urllib)"
SCHEMES = ("http", "https", "file")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Downloaded:
    """What :func:`download` wrote into the part file.

    ``size`` and ``sha256`` cover the whole file (resumed bytes included); ``filename`` is
    the server's name for it (Content-Disposition, else the last path segment of the final
    URL), already made safe to use as a file name; ``resumed_from`` is the byte offset the
    transfer restarted at (0: a full download); for ``file://`` URLs ``source_mtime_ns``
    is the source file's modification time (with ``size``, what tells a changed source).
    """

    url: str
    final_url: str
    filename: str
    size: int
    sha256: str
    resumed_from: int = 0
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    source_mtime_ns: int | None = None  # file:// only: the source's mtime when copied
    md5: str | None = None  # for publishers that give md5 only (Keras applications)


def download(url: str, part: Path, *, progress: bool = False, timeout: float | None = None,
             max_redirects: int = MAX_REDIRECTS, max_size: int | None = None) -> Downloaded:
    """Download ``url`` into ``part`` (resuming a previous partial download of the same URL).

    ``timeout`` (seconds, default DEFAULT_TIMEOUT) bounds the connect and every read; the
    whole transfer is bounded by MIN_RATE and ``max_size`` (see the module docstring).

    On success ``part`` holds the complete, fsynced file; on :class:`NetworkError` it holds
    what arrived so far (the next call resumes); on other errors it may hold anything and
    the caller should discard it.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DownloadError(f"{url}: unsupported URL scheme {scheme or '(none)'!r}; "
                            f"use one of {', '.join(SCHEMES)}", url=url)
    part.parent.mkdir(parents=True, exist_ok=True)
    limit = MAX_DOWNLOAD_BYTES if max_size is None else max_size
    if scheme == "file":
        return _copy_local(url, part, progress, limit)
    return _download_http(url, part, progress, timeout or DEFAULT_TIMEOUT, max_redirects,
                          limit)


def safe_filename(name: str, default: str = "download") -> str:
    """``name`` reduced to a plain file name: no folders, control characters or leading dots."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip().lstrip(".")
    return name[:200] or default


def state_path(part: Path) -> Path:
    """The resume record kept next to a part file."""
    return part.with_name(part.name + ".json")


def discard_part(part: Path) -> None:
    """Remove a part file and its resume record, if present."""
    for p in (part, state_path(part)):
        p.unlink(missing_ok=True)


# --- HTTP ---------------------------------------------------------------------------

def _download_http(url: str, part: Path, progress: bool, timeout: float,
                   max_redirects: int, max_size: int) -> Downloaded:
    offset, state = _resume_point(url, part)
    try:
        resp = _open(url, offset, state, timeout, max_redirects)
    except _RangeRefused:  # 416: our partial file is no prefix of theirs
        discard_part(part)
        return _download_http(url, part, progress, timeout, max_redirects, max_size)
    with resp:
        offset = _accept_offset(resp, url, offset, state)
        if offset is None:  # cannot continue this partial file; offset 0 next time
            resp.close()
            discard_part(part)
            return _download_http(url, part, progress, timeout, max_redirects, max_size)
        headers = resp.headers
        _refuse_html(url, headers.get("Content-Type"), part)
        total = _total_size(resp, offset)
        if total is not None and total > max_size:
            discard_part(part)
            raise DownloadError(f"{url}: the server announces {total} bytes, more than the "
                                f"{max_size} allowed for this artifact", url=url)
        meta = {"url": url, "etag": headers.get("ETag"),
                "last_modified": headers.get("Last-Modified"), "total": total}
        _write_state(part, meta)
        name = headers.get_filename() or _last_segment(resp.url) or _last_segment(url)
        # read1: whatever has arrived, so a timeout never discards bytes already received.
        (sha, md5), size = _stream(resp.read1, part, offset, total, progress,
                                   safe_filename(name), url, max_size)
    return Downloaded(url=url, final_url=resp.url, filename=safe_filename(name), size=size,
                      sha256=sha, resumed_from=offset, etag=meta["etag"],
                      last_modified=meta["last_modified"],
                      content_type=headers.get("Content-Type"), md5=md5)


def _resume_point(url: str, part: Path) -> tuple[int, dict[str, Any] | None]:
    """Bytes already downloaded for ``url`` and the validators recorded with them."""
    if not part.is_file():
        discard_part(part)
        return 0, None
    try:
        state = json.loads(state_path(part).read_text())
    except (OSError, ValueError):
        state = None
    size = part.stat().st_size
    # Without a record of which URL and how large, a partial file cannot be trusted.
    if (not isinstance(state, dict) or state.get("url") != url
            or not isinstance(state.get("total"), int) or not 0 < size < state["total"]):
        discard_part(part)
        return 0, None
    return size, state


def _open(url: str, offset: int, state: dict[str, Any] | None, timeout: float,
          max_redirects: int) -> http.client.HTTPResponse:
    """Send the GET (with a Range when resuming) and follow redirects; map failures."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                               "Accept-Encoding": "identity"})
    if offset and state:
        req.add_header("Range", f"bytes={offset}-")
        validator = state.get("etag") or state.get("last_modified")
        if validator:
            req.add_header("If-Range", validator)
    opener = urllib.request.build_opener(_RedirectHandler(max_redirects))
    try:
        return opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our partial file is no prefix of theirs
            raise _RangeRefused from None
        raise _http_error(url, e, max_redirects) from None
    except urllib.error.URLError as e:
        raise NetworkError(f"{url}: cannot connect ({e.reason})", url=url) from e
    except (http.client.HTTPException, OSError) as e:  # reset, timeout, bad status line
        raise NetworkError(f"{url}: connection failed ({e!r})", url=url) from e


class _RangeRefused(Exception):
    """Internal: the server answered 416 to a resume."""


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling with our limit and no https -> http downgrade."""

    def __init__(self, max_redirects: int):
        super().__init__()
        self.max_redirections = max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if old == "https" and new != "https":
            raise DownloadError(f"{req.full_url}: refusing redirect from https to {newurl}",
                                url=req.full_url)
        log.debug("redirect %s %s -> %s", code, req.full_url, newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_error(url: str, e: urllib.error.HTTPError, max_redirects: int) -> DownloadError:
    where = "" if e.url in (None, url) else f" (at {e.url})"
    if e.code in _REDIRECT_CODES:
        return DownloadError(f"{url}: more than {max_redirects} redirects or a redirect loop"
                             f"{where}", url=url)
    hint = ("; the server may be busy, try again later" if e.code >= 500 or e.code == 429
            else "; check the URL or handle")
    return DownloadError(f"{url}: server answered {e.code} {e.reason}{where}{hint}", url=url)


def _accept_offset(resp: http.client.HTTPResponse, url: str, offset: int,
                   state: dict[str, Any] | None) -> int | None:
    """Where the body starts in the file: ``offset`` for a fitting 206, 0 for a 200.

    None when the answer cannot be appended to the partial file (the caller starts over,
    without a Range, so this happens at most once per download).
    """
    if not offset:
        if resp.status == 206:
            raise DownloadError(f"{url}: server sent a partial answer (206) to a plain GET",
                                url=url)
        return 0
    if resp.status == 200:
        log.info("%s: server sent the whole file instead of resuming at byte %d",
                 url, offset)
        return 0
    if resp.status != 206:
        return None
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if (not m or int(m[1]) != offset
            or (state and m[3] != "*" and int(m[3]) != state.get("total"))):
        log.info("%s: unusable resume answer (Content-Range %r); starting over", url,
                 resp.headers.get("Content-Range"))
        return None
    log.info("%s: resuming at byte %d", url, offset)
    return offset


def _refuse_html(url: str, content_type: str | None, part: Path) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        discard_part(part)
        raise DownloadError(f"{url}: the server answered with an HTML page ({content_type}), "
                            "not an artifact: a login page, an error page or a wrong URL; "
                            "nothing was cached", url=url)


def _total_size(resp: http.client.HTTPResponse, offset: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _last_segment(url: str | None) -> str:
    return unquote(urlsplit(url or "").path.rstrip("/").rsplit("/", 1)[-1])


def _write_state(part: Path, meta: dict[str, Any]) -> None:
    state_path(part).write_text(json.dumps(meta))


# --- file:// ------------------------------------------------------------------------

def _copy_local(url: str, part: Path, progress: bool, max_size: int) -> Downloaded:
    """A file:// "download": a hashed copy (no resume; local copies are cheap to redo)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(f"{url}: file:// URLs must name a local path", url=url)
    src = Path(urllib.request.url2pathname(parts.path))
    if not src.is_file():
        raise DownloadError(f"{url}: no such file {src}", url=url, path=src)
    discard_part(part)
    st = src.stat()
    if st.st_size > max_size:
        raise DownloadError(f"{url}: {st.st_size} bytes, more than the {max_size} allowed for "
                            "this artifact", url=url, path=src)
    with src.open("rb") as f:
        (sha, md5), size = _stream(f.read, part, 0, st.st_size, progress, src.name, url,
                                   max_size)
    return Downloaded(url=url, final_url=url, filename=safe_filename(src.name), size=size,
                      sha256=sha, source_mtime_ns=st.st_mtime_ns, md5=md5)


# --- streaming ----------------------------------------------------------------------

def _stream(read: Callable[[int], bytes], part: Path, offset: int, total: int | None,
            progress: bool, desc: str, url: str,
            max_size: int = MAX_DOWNLOAD_BYTES) -> tuple[tuple[str, str], int]:
    """Append the body to ``part`` from ``offset``; return ((sha256, md5) of the file, its
    size)."""
    digest = _Digests()
    if offset:
        _hash_prefix(part, offset, digest)
    size, started = offset, time.monotonic()
    window_start, window_size = started, size
    log.info("downloading %s (%s, starting at byte %d)", url, _human(total), offset)
    bar = _progress_bar(progress, total, offset, desc)
    try:
        with part.open("r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while True:
                try:
                    chunk = read(CHUNK)
                except (http.client.HTTPException, OSError) as e:  # timeout, reset
                    _flush(out)
                    raise _interrupted(url, size, total, repr(e)) from e
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if size > max_size:
                    out.close()
                    discard_part(part)
                    raise DownloadError(f"{url}: more than the {max_size} bytes allowed for "
                                        "this artifact; the download was stopped and "
                                        "discarded", url=url)
                now = time.monotonic()
                if now - window_start >= RATE_WINDOW:
                    if size - window_size < MIN_RATE * (now - window_start):
                        _flush(out)
                        raise _interrupted(url, size, total,
                                           f"slower than {MIN_RATE} bytes/s for "
                                           f"{now - window_start:.0f} s")
                    window_start, window_size = now, size
                if bar is not None:
                    bar.update(len(chunk))
            _flush(out)
    finally:
        if bar is not None:
            bar.close()
    if total is not None and size != total:
        raise _interrupted(url, size, total, "connection closed early")
    seconds = max(time.monotonic() - started, 1e-6)
    log.info("downloaded %s: %s in %.1f s", url, _human(size), seconds)
    return (digest.sha256.hexdigest(), digest.md5.hexdigest()), size


class _Digests:
    """sha256 and md5 fed together (md5: what some publishers give; sha256: what we keep)."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.md5.update(data)


def _hash_prefix(part: Path, offset: int, digest: Any) -> None:
    if hash_file(digest, part, offset) != offset:
        raise DownloadError(f"{part}: partial file shrank while resuming", path=part)


def _flush(out: Any) -> None:
    out.flush()
    os.fsync(out.fileno())


def _interrupted(url: str, size: int, total: int | None, why: str) -> NetworkError:
    return NetworkError(f"{url}: download interrupted after {size} of {_human(total)} "
                        f"({why}); the partial file is kept and the next fetch resumes it",
                        url=url)


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)


def _human(n: int | None) -> str:
    if n is None:
        return "unknown size"
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"
