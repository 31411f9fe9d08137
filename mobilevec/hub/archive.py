"""Safe extraction of downloaded archives (tar, tar.gz/bz2/xz, zip), all or nothing.

The format is recognised from the first bytes, never from the file name: TF Hub serves
``.../feature_vector/5?tf-hub-format=compressed`` with no useful name at all.

Every member is checked before a byte of it is written; tarfile's own ``extract`` (and its
``filter=``, which differs between Python patch releases) is never used. Refused:
absolute paths, ``..`` components, backslashes and NUL in names, every kind of link
(symlinks and hardlinks, wherever they point: model archives have no use for them),
device files, FIFOs, sparse files and other special members, more than ``max_files``
members, more than ``max_bytes`` written, and tar extension headers (pax, GNU long names)
larger than :data:`MAX_EXTENDED_HEADER` or adding up to more than
:data:`MAX_EXTENDED_TOTAL`: tarfile reads such a header whole into memory, before any
member is seen, so a 10 MB tarball could otherwise declare one of gigabytes. Members are
written as plain files with default permissions.

Extraction goes into a temporary folder next to ``dest`` that is renamed into place only
when the whole archive was accepted, so a refused or corrupt archive leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import DownloadError

log = logging.getLogger(__name__)

GiB = 1 << 30
_CHUNK = 1 << 20
MAX_EXTENDED_HEADER = 1 << 16  # one pax or GNU long-name header (a path is < 4 kB)
MAX_EXTENDED_TOTAL = 1 << 22  # all of them in one archive
_TAR_COMPRESSIONS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError,
            ValueError, RuntimeError)


def archive_kind(path: Path) -> str | None:
    """"zip", "tar" (maybe compressed with gzip, bzip2 or xz) or None, from the content."""
    with Path(path).open("rb") as f:
        head = f.read(512)
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if any(head.startswith(magic) for magic in _TAR_COMPRESSIONS):
        return "tar"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    return None


def extract_archive(archive: Path, dest: Path, *, max_bytes: int = 2 * GiB,
                    max_files: int = 10_000) -> Path:
    """Extract ``archive`` into the folder ``dest`` (created; replaced if it exists).

    Returns ``dest``. Raises :class:`~mobilevec.errors.DownloadError` naming the archive
    (and the member, when one is at fault) if the content is not a tar or zip archive, is
    corrupt, or holds anything refused (see the module docstring); ``dest`` is then left as
    it was and no temporary files remain.
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise DownloadError(f"{archive}: not a tar, tar.gz or zip archive (by content)",
                            path=archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    budget = _Budget(archive, max_bytes, max_files)
    try:
        try:
            (_extract_zip if kind == "zip" else _extract_tar)(archive, tmp, budget)
        except DownloadError:
            raise
        except _CORRUPT as e:
            raise DownloadError(f"{archive}: corrupt or unreadable {kind} archive ({e})",
                                path=archive) from e
        _move_into_place(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s: %d files, %d bytes -> %s", archive, budget.files, budget.bytes,
             dest)
    return dest


class _Budget:
    """Counts members and bytes against the caps; raises on the first excess."""

    def __init__(self, archive: Path, max_bytes: int, max_files: int):
        self.archive, self.max_bytes, self.max_files = archive, max_bytes, max_files
        self.files = 0
        self.bytes = 0

    def member(self, name: str, declared_size: int) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise _refuse(self.archive, name, f"more than {self.max_files} members")
        if self.bytes + declared_size > self.max_bytes:
            raise _refuse(self.archive, name, f"would expand beyond {self.max_bytes} bytes")

    def wrote(self, name: str, n: int) -> None:
        # Declared sizes can lie (zip); what counts is what reaches the disk.
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise _refuse(self.archive, name, f"expands beyond {self.max_bytes} bytes")


def _refuse(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(f"{archive}: refused member {member!r}: {why}; nothing was "
                         "extracted", path=archive)


def _safe_relpath(archive: Path, name: str) -> PurePosixPath | None:
    """The member's path inside dest, or None for the archive root itself (``./``)."""
    if "\x00" in name or "\\" in name:
        raise _refuse(archive, name, "backslash or NUL in the name")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise _refuse(archive, name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(archive, name, "'..' in the path")
    return PurePosixPath(*parts) if parts else None


def _target(root: Path, rel: PurePosixPath, archive: Path, name: str) -> Path:
    target = root.joinpath(*rel.parts)
    # No links are ever written, so this holds by construction; checked all the same.
    if not target.resolve().is_relative_to(root.resolve()):
        raise _refuse(archive, name, "path leaves the destination")
    return target


def _write(src: IO[bytes], target: Path, budget: _Budget, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        while chunk := src.read(_CHUNK):
            budget.wrote(name, len(chunk))
            out.write(chunk)


# --- tar ----------------------------------------------------------------------------

class _HeaderTooLarge(Exception):
    """An extension header over the caps (raised from inside tarfile's header parsing)."""


_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                   tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _CappedTarInfo(tarfile.TarInfo):
    """TarInfo whose extension headers are size-checked before tarfile reads them."""

    def _proc_member(self, tarfile_):  # noqa: D102 - tarfile's own hook
        if self.type in _EXTENDED_TYPES:
            total = getattr(tarfile_, "_mobilevec_extended", 0) + self.size
            tarfile_._mobilevec_extended = total
            if self.size > MAX_EXTENDED_HEADER or total > MAX_EXTENDED_TOTAL:
                kind = "GNU long-name" if self.type in (tarfile.GNUTYPE_LONGNAME,
                                                        tarfile.GNUTYPE_LONGLINK) else "pax"
                raise _HeaderTooLarge(
                    f"a {self.size}-byte {kind} header (at most {MAX_EXTENDED_HEADER} bytes "
                    f"each, {MAX_EXTENDED_TOTAL} in all)")
        return super()._proc_member(tarfile_)


def _tar_problem(m: tarfile.TarInfo) -> str | None:
    if m.issparse():
        return "sparse file"
    if m.issym():
        return f"symbolic link to {m.linkname!r}"
    if m.islnk():
        return f"hard link to {m.linkname!r}"
    if m.ischr() or m.isblk():
        return "device file"
    if m.isfifo():
        return "FIFO"
    if not (m.isreg() or m.isdir()):
        return f"unsupported member type {m.type!r}"
    return None


def _extract_tar(archive: Path, root: Path, budget: _Budget) -> None:
    try:
        _extract_tar_members(archive, root, budget)
    except _HeaderTooLarge as e:
        raise _refuse(archive, "(extension header)", str(e)) from None


def _extract_tar_members(archive: Path, root: Path, budget: _Budget) -> None:
    # Stream mode ("r|*"): one pass, any compression, no seeking back for members.
    with archive.open("rb") as f, tarfile.open(fileobj=f, mode="r|*",
                                               tarinfo=_CappedTarInfo) as tf:
        for m in tf:
            rel = _safe_relpath(archive, m.name)
            if problem := _tar_problem(m):
                raise _refuse(archive, m.name, problem)
            budget.member(m.name, m.size if m.isreg() else 0)
            if rel is None:
                continue
            target = _target(root, rel, archive, m.name)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            if src is None:  # cannot happen for regular files; be explicit anyway
                raise _refuse(archive, m.name, "no data")
            with src:
                _write(src, target, budget, m.name)


# --- zip ----------------------------------------------------------------------------

def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if info.create_system != 3 or not mode:  # only Unix-made zips carry a file type
        return None
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return "device file"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"special file (mode {oct(mode)})"
    return None


def _extract_zip(archive: Path, root: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in _zip_members(zf):
            rel = _safe_relpath(archive, info.filename)
            if problem := _zip_problem(info):
                raise _refuse(archive, info.filename, problem)
            budget.member(info.filename, 0 if info.is_dir() else info.file_size)
            if rel is None:
                continue
            target = _target(root, rel, archive, info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _write(src, target, budget, info.filename)


def _zip_members(zf: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    # Check every name before writing any file, so a bad member late in the central
    # directory fails fast (the temp folder would catch it anyway).
    infos = zf.infolist()
    for info in infos:
        _safe_relpath(Path(zf.filename or "?"), info.filename)
    yield from infos


# --- commit -------------------------------------------------------------------------

def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished tree to ``dest``, replacing an older one if present."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def pack_folder(folder: Path, target: Path, companions: tuple[Path, ...] = ()) -> Path:
    """Write ``folder`` (and the ``companions`` files beside it) as an uncompressed tar at
    ``target``, deterministically: members sorted, owner, group and times zeroed, so that the
    same folder always gives the same bytes (and the same sha256 in the cache).

    Only plain files and folders are packed (what :func:`extract_archive` accepts); a link
    or special file inside ``folder`` raises DownloadError naming it.
    """
    folder = Path(folder)

    def add(tar: tarfile.TarFile, path: Path, name: str) -> None:
        st = path.lstat()
        info = tarfile.TarInfo(name)
        info.uid = info.gid = info.mtime = 0
        info.uname = info.gname = ""
        if stat.S_ISDIR(st.st_mode):
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info.size, info.mode = st.st_size, 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
        else:
            raise DownloadError(f"{path}: not a plain file or folder; a folder to import holds "
                                "only files and folders (no links)", path=path)

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, folder, folder.name)
        for path in sorted(folder.rglob("*")):
            add(tar, path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        for path in companions:
            add(tar, path, path.name)
    return target
