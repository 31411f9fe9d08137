"""Command-line inputs → image file paths: files, folders (recursive), globs, path lists.

Rules:

- a file named on the command line is taken whatever its suffix;
- a folder is walked recursively in sorted order, keeping files with an image suffix
  (:data:`mobilevec.data.images.IMAGE_SUFFIXES`, any case); symlinked folders are followed,
  each real folder once, so a symlink loop ends the walk instead of looping;
- an argument that does not exist and contains ``*``, ``?`` or ``[`` is a glob (``**``
  recursive); what it matches is taken as above;
- ``@FILE`` (or ``from_files``) reads one input per line (blank lines and ``#`` comments
  skipped; relative entries are relative to the current directory); ``-`` reads stdin;
- every path is made absolute (not resolved: a symlinked file keeps its own name), and a
  path met twice is kept once.

Inputs that match nothing, and folders that cannot be listed (unreadable, a path too long
for the system), are reported as ``(input, reason)`` pairs, never fatal and never skipped
silently.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MobilevecError
from .images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


@dataclass
class Sources:
    """Image paths found, in order, and the inputs that gave none with the reason."""

    paths: list[Path] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)


def _walk(folder: Path, found: Sources) -> Iterator[Path]:
    seen: set[tuple[int, int]] = set()

    def unreadable(error: OSError) -> None:
        where = os.path.abspath(error.filename or folder)
        log.warning("cannot list %s: %s", where, error.strerror or error)
        found.missing.append((where, f"cannot list this folder ({error.strerror or error})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(root)
        except OSError as e:
            unreadable(e)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink back into the tree: walked already
            log.info("not walking %s again (symlink loop)", root)
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def _list_file(name: str) -> Iterator[str]:
    try:
        stream = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise MobilevecError(f"cannot read the list of paths {name}: {e.strerror}") from e
    with stream:
        for line in stream:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def _expand_one(item: str, found: Sources) -> Iterator[Path]:
    path = Path(item)
    if path.is_dir():
        yield from _walk(path, found)
    elif path.exists() or path.is_symlink():
        yield path  # a named file is taken as is; a broken/looping link fails at decode
    elif _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            found.missing.append((item, "glob matched no file"))
        for match in matches:
            m = Path(match)
            if m.is_dir():
                yield from _walk(m, found)
            elif m.suffix.lower() in IMAGE_SUFFIXES:
                yield m
    else:
        found.missing.append((item, "no such file or folder"))


def expand_inputs(items: Iterable[str], from_files: Iterable[str] = ()) -> Sources:
    """Expand command-line ``items`` (and the lists in ``from_files``) into image paths."""
    found = Sources()
    seen: set[Path] = set()

    def inputs() -> Iterator[str]:
        for item in items:
            if item.startswith("@") and len(item) > 1:
                yield from _list_file(item[1:])
            else:
                yield item
        for name in from_files:
            yield from _list_file(name)

    for item in inputs():
        for path in _expand_one(item, found):
            path = Path(os.path.abspath(path))
            if path not in seen:
                seen.add(path)
                found.paths.append(path)
    return found


def spread(paths: Sequence[Path], limit: int) -> list[Path]:
    """At most ``limit`` of ``paths``, evenly spaced over the sequence."""
    if len(paths) <= limit:
        return list(paths)
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]
