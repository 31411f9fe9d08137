"""One embedding run: image files → a resumable vector store (what ``mobilevec embed`` does).

Files already stored with the same (path, size, mtime) are skipped; the rest are decoded in
parallel, embedded in batches and committed batch by batch (see
:mod:`mobilevec.embedding.store`), failures included. Ctrl-C stops cleanly after the batch in
hand; SIGKILL loses at most the batch being written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .batching import DEFAULT_BATCH_SIZE, Preprocessing, embed_batches
from .provenance import store_meta

if TYPE_CHECKING:
    import torch

    from ..engines import Engine
from .store import Key, VectorStore, file_key

__all__ = ["RunSummary", "run_embed", "store_meta"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts of one run; ``errors`` are this run's failures as (path, reason)."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)
    errors_file: Path | None = None

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0


def _keys(paths: Sequence[Path], done: set[Key], summary: RunSummary
          ) -> tuple[list[Path], dict[Path, Key], list[tuple[str, str]]]:
    todo, keys, errors = [], {}, []
    for path in paths:
        try:
            key = file_key(path)
        except OSError as e:
            errors.append((str(path), f"cannot read file ({e.strerror or e})"))
            continue
        if key in done:
            summary.skipped += 1
        else:
            todo.append(path)
            keys[path] = key
    return todo, keys, errors


def run_embed(model: torch.nn.Module | Engine, paths: Sequence[Path], output: str | Path, *,
              prep: Preprocessing, meta: dict, batch_size: int = DEFAULT_BATCH_SIZE,
              workers: int | None = None, threads: bool = False,
              missing: Sequence[tuple[str, str]] = (), prefetch: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> RunSummary:
    """Embed ``paths`` into the store at ``output`` (created or resumed), batch by batch.

    ``meta`` comes from :func:`store_meta` (its ``normalize`` and ``dtype`` are applied).
    ``missing`` are inputs that matched no file, recorded as failures. ``progress(done,
    total)`` is called after each committed batch. Returns the run's :class:`RunSummary`;
    Ctrl-C returns it with ``interrupted`` set, everything committed so far kept.
    """
    summary = RunSummary()
    start = time.perf_counter()
    with VectorStore.open(output, meta) as store:
        summary.errors_file = store.errors_csv
        todo, keys, early = _keys(paths, store.done_keys(), summary)
        early = list(missing) + early
        if early:
            store.append([], np.zeros((0, meta["dim"])), early)
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
            store.append([keys[p] for p in batch.paths], batch.vectors, errors)
            return len(batch.paths), errors

        try:
            for batch in embed_batches(model, todo, prep=prep, batch_size=batch_size,
                                       workers=workers, threads=threads,
                                       normalize=meta["normalize"], prefetch=prefetch):
                committed()
                writing = writer.submit(commit, batch)
            committed()
        except KeyboardInterrupt:
            summary.interrupted = True
            with suppress(Exception):
                committed()  # the batch already handed to the writer is kept
            log.warning("interrupted: %d images committed to %s", summary.ok, output)
        else:
            store.finish()
        finally:
            writer.shutdown(wait=True)
    summary.seconds = time.perf_counter() - start
    return summary
