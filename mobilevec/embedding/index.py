"""Approximate nearest neighbours for large vector tables (usearch HNSW), kept with the store.

Exact search (:func:`mobilevec.embedding.search.cosine_neighbours`) reads every stored vector for
every query: fine up to ~10^5 rows. Beyond that ``search`` builds an HNSW index (cosine
metric) once, saves it inside the store folder as ``_index.usearch`` with ``_index.json``
(the signature of the parts it was built from), and reuses it until the store changes. The
index is optional (``pip install 'mobilevec[index]'``); without it search stays exact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .._io import atomic_write, atomic_write_text
from .._optional import available, require
from .store import StoredVectors, store_paths

log = logging.getLogger(__name__)

INDEX_MIN_ROWS = 100_000  # below this, "auto" searches exactly
INDEX_FILE = "_index.usearch"
SIGNATURE_FILE = "_index.json"
METHODS = ("auto", "exact", "usearch")
SINGLE_THREAD_ROWS = 100_000  # smaller indexes are built on one thread (see _build)


def index_available() -> bool:
    return available("usearch")


def usearch_index(purpose: str | None = None):
    """usearch's ``Index`` class, imported after OpenVINO when that is installed (else
    :class:`~mobilevec.errors.MissingDependencyError` naming the ``index`` extra).

    usearch's extension exports the C++ runtime it links statically (3,806 ``std::``
    symbols in 2.26); imported first, it leaves OpenVINO unable to read any IR in that
    process (``read_model`` fails with an empty message), so ``dedup`` or ``search`` then
    ``embed`` in one Python session broke. OpenVINO imported first is unaffected.
    """
    if available("openvino"):
        import openvino  # noqa: F401  (load order only)
    return require("usearch.index", "index", purpose=purpose).Index


def store_signature(output: str | Path) -> dict:
    """What the index depends on: every part file of the store, with size and mtime."""
    root, _ = store_paths(output)
    parts = sorted(p for p in root.rglob("part-*") if p.is_file() and "_errors" not in p.parts)
    return {"parts": [[p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
                      for p in parts]}


def _build(vectors: np.ndarray):
    Index = usearch_index()
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f32")
    # As in dedup._add: usearch's threaded inserts can leave near-identical rows unlinked;
    # below SINGLE_THREAD_ROWS one thread takes seconds and the index is reproducible.
    threads = 1 if len(vectors) < SINGLE_THREAD_ROWS else 0
    index.add(np.arange(len(vectors), dtype=np.uint64),
              np.ascontiguousarray(vectors, np.float32), threads=threads)
    return index


def load_or_build_index(output: str | Path, stored: StoredVectors):
    """The store's HNSW index: loaded when its signature matches the store, else built
    from ``stored`` (the store's rows, as :func:`~mobilevec.embedding.store.read_store` gives
    them) and saved beside the parts. A store that cannot be written to still gets an
    index, in memory only."""
    Index = usearch_index()
    root, _ = store_paths(output)
    index_file, signature_file = root / INDEX_FILE, root / SIGNATURE_FILE
    signature = {**store_signature(output), "rows": len(stored.paths),
                 "dim": int(stored.vectors.shape[1])}
    try:
        if json.loads(signature_file.read_text()) == signature and index_file.is_file():
            return Index.restore(str(index_file), view=False)
    except (OSError, ValueError):
        pass
    log.info("building an HNSW index of %d vectors in %s", len(stored.paths), index_file)
    index = _build(stored.vectors)
    try:
        atomic_write(index_file, lambda tmp: index.save(str(tmp)))
        atomic_write_text(signature_file, json.dumps(signature))
    except OSError as e:
        log.warning("could not save the index in %s (%s); it is rebuilt next time", root, e)
    return index


def neighbours(output: str | Path, stored: StoredVectors, queries: np.ndarray, k: int,
               method: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(indices, cosine similarities, method used): the ``k`` stored rows nearest each query.

    ``method`` "exact" (brute force), "usearch" (HNSW; approximate), or "auto" (usearch when
    installed and the store holds ≥ :data:`INDEX_MIN_ROWS` rows). Arrays are (Q, min(k, N)),
    most similar first, as :func:`~mobilevec.embedding.search.cosine_neighbours` returns them.
    """
    from ..errors import MobilevecError
    from .search import cosine_neighbours

    if method not in METHODS:
        raise MobilevecError(f"unknown search method {method!r}; use one of {METHODS}")
    if method == "auto":
        large = len(stored.paths) >= INDEX_MIN_ROWS
        method = "usearch" if large and index_available() else "exact"
    if method == "exact":
        return (*cosine_neighbours(queries, stored.vectors, k), "exact")
    usearch_index("--index usearch")
    index = load_or_build_index(output, stored)
    k = min(k, len(stored.paths))
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    matches = index.search(queries, k)
    keys = np.atleast_2d(matches.keys).astype(np.intp)
    sims = 1.0 - np.atleast_2d(matches.distances).astype(np.float32)
    return keys[:, :k], sims[:, :k], "usearch"
