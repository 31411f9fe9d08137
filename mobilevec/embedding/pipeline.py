"""One embedding run: image files → a resumable vector store (what ``mobilevec embed`` does).

Files already stored with the same (path, size, mtime) are skipped; the rest are decoded in
parallel, embedded in batches and committed batch by batch (see
:mod:`mobilevec.embedding.store`), failures included. Anything that is not a regular file
(a FIFO, socket or device) is a failure before any decoding. Ctrl-C (and SIGTERM, which
the command line turns into the same interrupt) stops cleanly after the batch in hand, at
any moment, the end-of-run merge included; SIGKILL loses at most the batch being written.
A store that cannot be written to (a full disk) stops the run with a :class:`StoreError`
that says how many images are stored; a merge that fails is only a warning.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Container, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import not_a_regular_file
from ..errors import StoreError
from .batching import DEFAULT_BATCH_SIZE, DEFAULT_FILE_TIMEOUT, Preprocessing, embed_batches
from .provenance import store_meta
from .store import Key, VectorStore

if TYPE_CHECKING:
    import torch

    from ..engines import Engine

__all__ = ["RunSummary", "run_embed", "store_meta"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts of one run; ``errors`` are this run's failures as (path, reason).

    ``warnings``: what went wrong without failing the run (a merge that did not fit on
    the disk, a damaged part moved aside); ``read_only``: the store could not be written,
    so nothing was (failures included).
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    pruned: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    read_only: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors_file: Path | None = None

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0


def _keys(paths: Sequence[Path], done: Container[Key], summary: RunSummary
          ) -> tuple[list[Path], dict[Path, Key], list[tuple[str, str]]]:
    todo, keys, errors = [], {}, []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            errors.append((str(path), f"cannot read file ({e.strerror or e})"))
            continue
        what = not_a_regular_file(st.st_mode)
        if what:
            errors.append((str(path), f"not a regular file ({what}); only image files are "
                                      "read"))
            continue
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key in done:
            summary.skipped += 1
        else:
            todo.append(path)
            keys[path] = key
    return todo, keys, errors


class _WriteFailed(Exception):
    """The store could not be written (``error``: the OSError)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _write_failed(output: str | Path, e: OSError, summary: RunSummary,
                  store: VectorStore) -> StoreError:
    full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    cause = "the disk is full" if full else (e.strerror or str(e))
    return StoreError(f"cannot write to {output} ({cause}): {summary.ok} images of this run "
                      f"are stored ({len(store.done_keys())} in all); free space and re-run "
                      "the same command to embed the rest")


def _quarantine_warnings(store: VectorStore) -> list[str]:
    return [f"{where.name} was damaged ({cause}): moved to {where.parent}; its images are "
            "embedded again" for where, cause in store.quarantined]


def run_embed(model: torch.nn.Module | Engine, paths: Sequence[Path], output: str | Path, *,
              prep: Preprocessing, meta: dict, batch_size: int = DEFAULT_BATCH_SIZE,
              workers: int | None = None, threads: bool = False,
              missing: Sequence[tuple[str, str]] = (), prefetch: int | None = None,
              file_timeout: float | None = DEFAULT_FILE_TIMEOUT, prune: bool = False,
              progress: Callable[[int, int], None] | None = None) -> RunSummary:
    """Embed ``paths`` into the store at ``output`` (created or resumed), batch by batch.

    ``meta`` comes from :func:`store_meta` (its ``normalize`` and ``dtype`` are applied).
    ``missing`` are inputs that matched no file, recorded as failures. ``file_timeout``
    bounds one file's read and decode (see :func:`~mobilevec.embedding.batching.decode_files`).
    ``prune`` drops, at the end, the rows of files that are gone and rows readers hide.
    ``progress(done, total)`` is called after each committed batch. Returns the run's
    :class:`RunSummary`; Ctrl-C returns it with ``interrupted`` set, everything committed
    so far kept. Raises :class:`StoreError` when the store cannot be written.
    """
    summary = RunSummary()
    start = time.perf_counter()
    with VectorStore.open(output, meta) as store:
        summary.errors_file = store.errors_csv
        summary.warnings += _quarantine_warnings(store)
        todo, keys, early = _keys(paths, store.done_keys(), summary)
        early = list(missing) + early
        if not store.writable:
            if todo:
                raise StoreError(f"{output} is read-only: {len(todo)} images are not stored "
                                 "yet and cannot be; nothing was embedded")
            summary.read_only = True
            summary.failed, summary.errors = len(early), early
            summary.seconds = time.perf_counter() - start
            return summary
        if early:
            try:
                store.append([], np.zeros((0, meta["dim"])), early)
            except OSError as e:
                raise _write_failed(output, e, summary, store) from None
            summary.failed += len(early)
            summary.errors += early
        if progress:
            progress(0, len(todo))
        # Parts are written (and fsynced) by a writer thread while the next batch is decoded
        # and embedded; at most one batch waits for it.
        writer = ThreadPoolExecutor(1, thread_name_prefix="mobilevec-writer")
        writing: Future | None = None

        def committed() -> None:
            nonlocal writing
            future, writing = writing, None
            if future is None:
                return
            stored, errors = future.result()
            summary.ok += stored
            summary.failed += len(errors)
            summary.errors += errors
            if progress:
                progress(summary.ok + summary.failed - len(early), len(todo))

        def commit(batch) -> tuple[int, list[tuple[str, str]]]:
            errors = [(str(p), reason) for p, reason in batch.errors]
            try:
                store.append([keys[p] for p in batch.paths], batch.vectors, errors)
            except OSError as e:
                raise _WriteFailed(e) from None
            return len(batch.paths), errors

        try:
            try:
                for batch in embed_batches(model, todo, prep=prep, batch_size=batch_size,
                                           workers=workers, threads=threads,
                                           normalize=meta["normalize"], prefetch=prefetch,
                                           file_timeout=file_timeout):
                    committed()
                    writing = writer.submit(commit, batch)
                committed()
            except KeyboardInterrupt:
                summary.interrupted = True
                with suppress(Exception):
                    committed()  # the batch already handed to the writer is kept
                log.warning("interrupted: %d images committed to %s", summary.ok, output)
            else:
                try:
                    report = store.finish(prune=prune)
                except KeyboardInterrupt:  # every step of finish leaves a readable store
                    summary.interrupted = True
                except OSError as e:
                    raise _WriteFailed(e) from None
                else:
                    summary.pruned = report.pruned
                    summary.warnings += report.warnings
            finally:
                writer.shutdown(wait=True)
        except _WriteFailed as e:
            raise _write_failed(output, e.error, summary, store) from None
    summary.seconds = time.perf_counter() - start
    return summary
