"""Exact cosine nearest neighbours over feature vectors (numpy)."""

from __future__ import annotations

import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_neighbours(queries: np.ndarray, corpus: np.ndarray, k: int,
                      exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` nearest corpus rows for each query.

    ``exclude_self`` drops the diagonal (queries == corpus, leave-one-out).
    """
    sims = l2_normalize(queries) @ l2_normalize(corpus).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, sims.shape[1] - (1 if exclude_self else 0))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def leave_one_out_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """1-nearest-neighbour (cosine) accuracy, each vector classified by all the others."""
    nearest, _ = cosine_neighbours(vectors, vectors, 1, exclude_self=True)
    return float(np.mean(labels[nearest[:, 0]] == labels))
