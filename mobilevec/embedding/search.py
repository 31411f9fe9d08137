"""Exact cosine nearest neighbours and near-duplicate groups over feature vectors (numpy).

Everything here is exact (brute force, blockwise so memory stays bounded): fine up to a
few hundred thousand vectors. Vectors may be float16 or float32; similarities are
computed in float32.
"""

from __future__ import annotations

import numpy as np

# Similarity blocks are kept near this many float32 values (128 MiB).
_BLOCK_VALUES = 1 << 25


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _row_blocks(rows: int, columns: int):
    step = max(1, _BLOCK_VALUES // max(columns, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def cosine_neighbours(queries: np.ndarray, corpus: np.ndarray, k: int,
                      exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` nearest corpus rows for each query.

    ``queries`` (Q, D), ``corpus`` (N, D); returns two (Q, min(k, N)) arrays, most similar
    first, ties in corpus order. ``exclude_self`` drops the diagonal (queries == corpus,
    leave-one-out).
    """
    q, c = l2_normalize(queries), l2_normalize(corpus)
    k = max(0, min(k, len(c) - (1 if exclude_self else 0)))
    order = np.zeros((len(q), k), np.intp)
    best = np.zeros((len(q), k), np.float32)
    for start, stop in _row_blocks(len(q), len(c)):
        sims = q[start:stop] @ c.T
        if exclude_self:
            rows = np.arange(start, stop)
            sims[rows - start, rows] = -np.inf
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        order[start:stop] = top
        best[start:stop] = np.take_along_axis(sims, top, axis=1)
    return order, best


def leave_one_out_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """1-nearest-neighbour (cosine) accuracy, each vector classified by all the others."""
    nearest, _ = cosine_neighbours(vectors, vectors, 1, exclude_self=True)
    return float(np.mean(labels[nearest[:, 0]] == labels))


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def near_duplicate_groups(vectors: np.ndarray, threshold: float = 0.95) -> list[list[int]]:
    """Groups of rows linked by cosine similarity >= ``threshold`` (transitively).

    Returns groups of two or more row indices, each sorted, largest groups first (then by
    first index). Single-linkage: A~B and B~C put A, B, C in one group.
    """
    v = l2_normalize(vectors)
    parent = np.arange(len(v))
    for start, stop in _row_blocks(len(v), len(v)):
        sims = v[start:stop] @ v.T
        rows, cols = np.nonzero(sims >= threshold)
        rows += start
        for i, j in zip(rows[rows < cols].tolist(), cols[rows < cols].tolist(), strict=True):
            a, b = _find(parent, i), _find(parent, j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(v)):
        groups.setdefault(_find(parent, i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
