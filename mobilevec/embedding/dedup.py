"""Near-duplicate groups that do not chain, top-k neighbour graphs, and ``dedup --new``.

A *score* compares two images of one collection (:class:`~mobilevec.models.registry.DedupRule`):
the cosine of their vectors, or the cosine after subtracting the collection's mean vector
("centred"). Pairs at or above the rule's threshold are near-duplicates.

How groups are made, at any size, without an N x N matrix:

1. **k-NN graph.** Each image's ``k`` highest-scoring other images. Exact (blockwise matrix
   products) below :data:`ANN_MIN_ROWS` rows; above, an HNSW index (usearch) over the
   scored vectors projected by PCA to :data:`PROJECTED_DIM` dimensions proposes ``2k``
   candidates per image, and every candidate is re-scored exactly on the full vectors, so a
   score is never approximate (only a missed candidate is possible).
2. **Groups that do not chain.** Images with the most above-threshold neighbours are taken
   first as *seeds*; a neighbour joins a seed's group only if it scores at or above the
   threshold with **every** member already in it (complete linkage), the neighbour whose
   lowest score to the members is highest first. A~B and B~C with A, C
   unrelated give {A, B} and {C} (or {B, C} and {A}), never {A, B, C}.
3. **Keep rule.** In each group one image is kept (``largest`` file, ``oldest`` mtime, or
   ``first`` in the store's order) and the others are listed for removal with their score
   to the kept one.

The graph (and, on the ANN path, the index, the mean and the projection) is kept in the
store's folder under ``_dedup/``, with the signature of the store's parts: a later ``dedup``
on an unchanged store reuses it; ``dedup --new`` scores only rows added since against the
whole store (with the mean saved then, so that its scores are those of the last run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_write, atomic_write_text
from .._optional import available
from ..errors import DedupError, StoreError
from ..models.registry import MODELS, SCORES, DedupRule
from .index import SINGLE_THREAD_ROWS, store_signature, usearch_index
from .store import StoredVectors, store_paths

log = logging.getLogger(__name__)

ANN_MIN_ROWS = 20_000  # below this, "auto" builds the graph exactly
PROJECTED_DIM = 128  # the ANN index's dimensions (PCA of the scored vectors)
DEFAULT_K = 10
KEEP_RULES = ("largest", "oldest", "first")
METHODS = ("auto", "exact", "usearch", "buckets")
BUCKET_ROWS = 500  # "buckets": rows per k-means bucket, on average
PROBE = 1  # "buckets": each bucket's rows are compared with the rows of this many buckets
SPREAD = 2  # "buckets": as a candidate, a row is in its SPREAD nearest buckets
_KMEANS_SAMPLE = 65_536
_KMEANS_ROUNDS = 8
STATE_DIR = "_dedup"
_FALLBACK = DedupRule("cosine", 0.95)
_BLOCK_VALUES = 1 << 24  # float32 values per similarity block (64 MiB)
_PCA_SAMPLE = 20_000
MEAN_PRIOR_ROWS = 16  # a centred score's mean counts as this many rows less sure (Scorer.fit)


# --- the rule ----------------------------------------------------------------------------------
def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [-1, 1] (a cosine), else :class:`DedupError`."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise DedupError(f"threshold {threshold!r} is not a number; give a cosine in "
                         "[-1, 1]") from None
    if not -1.0 <= value <= 1.0:  # also refuses nan
        raise DedupError(f"threshold {threshold!r} is outside [-1, 1]: scores are cosines "
                         "(1: the same vector)")
    return value


def rule_for(meta: dict, threshold: float | None = None, score: str | None = None,
             model: str | None = None) -> DedupRule:
    """The rule ``dedup`` applies to a store made as ``meta`` says: the model's calibrated
    rule, with ``threshold`` / ``score`` overriding its parts. ``model`` (a name the user
    gave) must be the store's model. A store of a model mobilevec does not know needs an
    explicit ``threshold``."""
    stored = meta.get("model")
    if model is not None and model != stored:
        raise DedupError(f"the store holds {stored} vectors, not {model}; its near-duplicate "
                         "rule is that model's (drop --model, or use a store of that model)")
    if score is not None and score not in SCORES:
        raise DedupError(f"unknown score {score!r}; use one of {SCORES}")
    config = MODELS.get(stored) if isinstance(stored, str) else None
    if config is None:
        if threshold is None:
            raise DedupError(f"the store was written by model {stored!r}, which has no "
                             "calibrated near-duplicate rule; give --threshold (and "
                             "--score cosine|centred)")
        base = _FALLBACK
    else:
        base = config.dedup
    return DedupRule(score or base.score,
                     base.threshold if threshold is None else check_threshold(threshold))


# --- scores ------------------------------------------------------------------------------------
def _blocks(rows: int, columns: int, values: int = _BLOCK_VALUES):
    step = max(1, values // max(columns, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def collection_mean(vectors: np.ndarray) -> np.ndarray:
    """The mean of the L2-normalised rows (float32), in blocks: no full float32 copy."""
    total = np.zeros(vectors.shape[1], np.float64)
    for a, b in _blocks(len(vectors), vectors.shape[1]):
        block = np.asarray(vectors[a:b], np.float32)
        total += (block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True),
                                     1e-12)).sum(0)
    return (total / max(len(vectors), 1)).astype(np.float32)


@dataclass
class Scorer:
    """Turns stored rows into unit vectors whose dot products are the rule's scores."""

    score: str
    mean: np.ndarray | None = None  # for "centred": the collection's mean unit vector

    @classmethod
    def fit(cls, score: str, vectors: np.ndarray) -> Scorer:
        if score != "centred":
            return cls(score, None)
        # The mean of a few images is mostly those images (of two, their midpoint: centred,
        # the pair is always at -1), so it is shrunk towards zero by n / (n + MEAN_PRIOR_ROWS):
        # tiny collections score nearly as plain cosine, large ones as centred.
        n = len(vectors)
        return cls(score, collection_mean(vectors) * np.float32(n / (n + MEAN_PRIOR_ROWS)))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float32)
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        if self.score == "centred" and self.mean is not None:
            rows = rows - self.mean
            rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        return rows


def pair_scores(vectors: np.ndarray, scorer: Scorer, rows: list[int]) -> np.ndarray:
    """(len(rows), len(rows)) scores among ``rows`` (exact)."""
    unit = scorer(vectors[np.asarray(rows, np.intp)])
    return unit @ unit.T


# --- the k-NN graph ----------------------------------------------------------------------------
@dataclass
class Graph:
    """Each query row's ``k`` best other rows: ``indices`` (Q, k) int64 (-1: none) and
    ``scores`` (Q, k) float32, best first; ``rows`` are the query rows (all rows, or the new
    ones for ``--new``)."""

    rows: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    method: str


def _exact_topk(queries: np.ndarray, query_rows: np.ndarray, vectors: np.ndarray,
                scorer: Scorer, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(vectors)
    k_eff = max(0, min(k, n - 1))
    indices = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    if k_eff == 0 or len(queries) == 0:
        return indices, scores
    q = scorer(queries)
    best_i = np.full((len(q), k_eff), -1, np.int64)
    best_s = np.full((len(q), k_eff), -np.inf, np.float32)
    # The corpus in column blocks, each scored once: never a full float32 copy of it.
    col_step = min(n, 32_768)
    for c0 in range(0, n, col_step):
        c1 = min(n, c0 + col_step)
        corpus = scorer(vectors[c0:c1])
        for a, b in _blocks(len(q), c1 - c0):
            sims = q[a:b] @ corpus.T
            own = query_rows[a:b]
            inside = (own >= c0) & (own < c1)
            sims[np.nonzero(inside)[0], own[inside] - c0] = -np.inf
            cand_s = np.concatenate([best_s[a:b], sims], axis=1)
            cand_i = np.concatenate([best_i[a:b],
                                     np.broadcast_to(np.arange(c0, c1), sims.shape)], axis=1)
            top = np.argsort(-cand_s, axis=1, kind="stable")[:, :k_eff]
            best_s[a:b] = np.take_along_axis(cand_s, top, axis=1)
            best_i[a:b] = np.take_along_axis(cand_i, top, axis=1)
    indices[:, :k_eff], scores[:, :k_eff] = best_i, best_s
    indices[~np.isfinite(scores)] = -1
    return indices, scores


def _fit_projection(vectors: np.ndarray, scorer: Scorer, dim: int, seed: int = 0
                    ) -> np.ndarray | None:
    """(D, dim) PCA basis of the scored vectors (from a sample), or None when D <= dim."""
    if vectors.shape[1] <= dim:
        return None
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(vectors), min(len(vectors), _PCA_SAMPLE), replace=False))
    sample = scorer(vectors[take])
    sample -= sample.mean(0)
    # The top eigenvectors of the D x D covariance are the SVD's right singular vectors; the
    # SVD of the 20,000 x 1024 sample itself took 51 s on 2 shared cores, this about 1 s.
    _, vectors_ = np.linalg.eigh(sample.T.astype(np.float64) @ sample)
    return np.ascontiguousarray(vectors_[:, ::-1][:, :dim], np.float32)


def _project(vectors: np.ndarray, scorer: Scorer, basis: np.ndarray | None) -> np.ndarray:
    dim = vectors.shape[1] if basis is None else basis.shape[1]
    out = np.empty((len(vectors), dim), np.float32)
    for a, b in _blocks(len(vectors), vectors.shape[1]):
        unit = scorer(vectors[a:b])
        out[a:b] = unit if basis is None else unit @ basis
    return out


def _new_index(dim: int):
    Index = usearch_index()
    # Connectivity and expansion below usearch's defaults: candidates are re-scored exactly,
    # so the index only has to propose them, and 10^6 rows must build in minutes on 2 cores.
    return Index(ndim=dim, metric="cos", dtype="f32", connectivity=12, expansion_add=64,
                 expansion_search=64)


def _add(index, keys: np.ndarray, projected: np.ndarray) -> None:
    # usearch's concurrent inserts can leave near-identical rows unlinked (on the test's 3,200
    # vectors, 30 of 3,600 true neighbours were missed over 6 threaded builds, none on one
    # thread), so below SINGLE_THREAD_ROWS, where one thread takes seconds, the build is
    # single-threaded and the groups are reproducible run to run.
    threads = 1 if len(keys) < SINGLE_THREAD_ROWS else 0
    index.add(keys.astype(np.uint64), projected, threads=threads)


def _rescore(index, queries: np.ndarray, query_rows: np.ndarray, vectors: np.ndarray,
             scorer: Scorer, key_to_row, k: int) -> tuple[np.ndarray, np.ndarray]:
    """ANN candidates of each query, re-scored exactly on the full vectors; best ``k``."""
    indices = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    wanted = min(2 * k + 1, len(index))
    if wanted == 0:
        return indices, scores
    step = 4096
    for a in range(0, len(queries), step):
        b = min(len(queries), a + step)
        found = index.search(queries[a:b], wanted)
        keys = np.atleast_2d(np.asarray(found.keys)).astype(np.int64)
        cand = key_to_row(keys)  # (B, wanted) rows, -1 for keys no longer in the store
        cand[cand == query_rows[a:b, None]] = -1
        unit_q = scorer(vectors[query_rows[a:b]])
        flat = np.where(cand < 0, 0, cand).ravel()
        unit_c = scorer(vectors[flat]).reshape(b - a, wanted, -1)
        sims = np.einsum("bd,bkd->bk", unit_q, unit_c)
        sims[cand < 0] = -np.inf
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        got = min(k, wanted)
        indices[a:b, :got] = np.take_along_axis(cand, top, axis=1)
        scores[a:b, :got] = np.take_along_axis(sims, top, axis=1)
    indices[~np.isfinite(scores)] = -1
    return indices, scores


# --- buckets: k-means cells, exact inside ----------------------------------------------------
# Cost: about rows x BUCKET_ROWS x SPREAD x PROBE dot products of the full vectors (10^6 rows:
# 10^12), against HNSW's build and search, which measured here at 76 s per 200,000 inserts and
# 21 s per 50,000 searches on 2 threads (docs/benchmarks.md, "Dedup and search").
@dataclass
class Buckets:
    """Where rows go for the "buckets" graph: the PCA ``basis`` (D, d) or None, the unit
    ``centroids`` (C, d) of spherical k-means in that space, and for each bucket the
    ``probe`` (C, P) buckets its rows are compared with (itself first)."""

    basis: np.ndarray | None
    centroids: np.ndarray
    probe: np.ndarray

    def assign(self, vectors: np.ndarray, scorer: Scorer) -> np.ndarray:
        """The :data:`SPREAD` nearest buckets (int32, nearest first) of every row of
        ``vectors``, in blocks: a row is queried from the first, found from all."""
        spread = min(SPREAD, len(self.centroids))
        out = np.empty((len(vectors), spread), np.int32)
        step = 8192  # (step, cells) scores and argpartition's int64 copy: ~200 MB at 2,000
        for a in range(0, len(vectors), step):
            placed = _unit_rows(_project(vectors[a:a + step], scorer, self.basis))
            sims = placed @ self.centroids.T
            near = np.argpartition(-sims, spread - 1, axis=1)[:, :spread]
            first = np.argsort(-np.take_along_axis(sims, near, axis=1), axis=1)
            out[a:a + step] = np.take_along_axis(near, first, axis=1)
        return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_buckets(vectors: np.ndarray, scorer: Scorer, seed: int = 0) -> Buckets:
    """Spherical k-means (about ``len / BUCKET_ROWS`` centroids) on a sample of the rows'
    projected scored vectors."""
    rng = np.random.default_rng(seed)
    basis = _fit_projection(vectors, scorer, PROJECTED_DIM, seed)
    take = np.sort(rng.choice(len(vectors), min(len(vectors), _KMEANS_SAMPLE), replace=False))
    sample = _unit_rows(_project(vectors[take], scorer, basis))
    count = max(1, min(len(sample), round(len(vectors) / BUCKET_ROWS)))
    centroids = sample[rng.choice(len(sample), count, replace=False)]
    for _ in range(_KMEANS_ROUNDS):
        nearest = np.concatenate([np.argmax(sample[a:a + 8192] @ centroids.T, axis=1)
                                  for a in range(0, len(sample), 8192)])
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]
        centroids = _unit_rows(sums)
    probe = np.argsort(-(centroids @ centroids.T), axis=1, kind="stable")[:, :PROBE]
    probe[:, 0] = np.arange(count)  # itself first (also when two centroids coincide)
    return Buckets(basis, centroids.astype(np.float32), probe.astype(np.int32))


def _bucket_topk(vectors: np.ndarray, scorer: Scorer, buckets: Buckets, bucket_of: np.ndarray,
                 query_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's ``k`` best rows among those of its bucket's probe buckets, scored
    exactly on the full vectors."""
    indices = np.full((len(query_rows), k), -1, np.int64)
    scores = np.full((len(query_rows), k), -np.inf, np.float32)
    count = len(buckets.centroids)
    # Candidates: every row under each of its buckets (rows repeat, SPREAD times).
    member_rows = np.repeat(np.arange(len(bucket_of)), bucket_of.shape[1])
    member_bucket = bucket_of.ravel()
    order = np.argsort(member_bucket, kind="stable")
    order_rows = member_rows[order]
    starts = np.searchsorted(member_bucket[order], np.arange(count + 1))
    query_bucket = bucket_of[query_rows, 0]
    by_bucket = np.argsort(query_bucket, kind="stable")
    q_starts = np.searchsorted(query_bucket[by_bucket], np.arange(count + 1))
    for b in np.unique(query_bucket).tolist():
        mine = by_bucket[q_starts[b]:q_starts[b + 1]]  # positions in query_rows
        cand = np.unique(np.concatenate([order_rows[starts[c]:starts[c + 1]]
                                         for c in buckets.probe[b].tolist()]))
        unit_c = scorer(vectors[cand])
        for a, z in _blocks(len(mine), len(cand)):
            chunk = mine[a:z]
            rows = query_rows[chunk]
            sims = scorer(vectors[rows]) @ unit_c.T
            pos = np.minimum(np.searchsorted(cand, rows), len(cand) - 1)
            own = cand[pos] == rows
            sims[np.nonzero(own)[0], pos[own]] = -np.inf
            got = min(k, len(cand))
            top = np.argpartition(-sims, got - 1, axis=1)[:, :got] if got < len(cand) \
                else np.broadcast_to(np.arange(len(cand)), sims.shape)
            top_s = np.take_along_axis(sims, top, axis=1)
            best = np.argsort(-top_s, axis=1, kind="stable")
            indices[chunk, :got] = cand[np.take_along_axis(top, best, axis=1)]
            scores[chunk, :got] = np.take_along_axis(top_s, best, axis=1)
    indices[~np.isfinite(scores)] = -1
    return indices, scores


def knn_graph(vectors: np.ndarray, scorer: Scorer, k: int = DEFAULT_K, method: str = "auto",
              rows: np.ndarray | None = None) -> Graph:
    """The ``k`` best-scoring other rows of each of ``rows`` (default: all), over all rows.

    ``method`` "exact", "usearch" (HNSW proposals, exact re-scoring), "buckets" (k-means
    cells of about :data:`BUCKET_ROWS` rows, every row a member of its :data:`SPREAD`
    nearest; exact scores inside a cell and its :data:`PROBE` - 1 nearest cells) or "auto" (usearch
    from :data:`ANN_MIN_ROWS` rows when installed). In memory only; see :func:`find_duplicates`
    for the graph kept with a store.
    """
    method = _method(method, len(vectors))
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows, np.int64)
    if method == "exact":
        return Graph(rows, *_exact_topk(vectors[rows], rows, vectors, scorer, k), "exact")
    if method == "buckets":
        buckets = fit_buckets(vectors, scorer)
        return Graph(rows, *_bucket_topk(vectors, scorer, buckets,
                                         buckets.assign(vectors, scorer), rows, k), "buckets")
    basis = _fit_projection(vectors, scorer, PROJECTED_DIM)
    projected = _project(vectors, scorer, basis)
    index = _new_index(projected.shape[1])
    _add(index, np.arange(len(vectors)), projected)
    return Graph(rows, *_rescore(index, projected[rows], rows, vectors, scorer,
                                 lambda keys: keys, k), "usearch")


def _method(method: str, rows: int) -> str:
    if method not in METHODS:
        raise DedupError(f"unknown method {method!r}; use one of {METHODS}")
    if method == "auto":
        return "usearch" if rows >= ANN_MIN_ROWS and available("usearch") else "exact"
    if method == "usearch":
        usearch_index("--index usearch")
    return method


# --- groups ------------------------------------------------------------------------------------
@dataclass
class Group:
    """One group of near-duplicates: the row kept, the rows to remove and each one's score
    to the kept row (same order)."""

    keep: int
    remove: list[int]
    scores: list[float]

    @property
    def members(self) -> list[int]:
        return [self.keep, *self.remove]


@dataclass
class DedupResult:
    groups: list[Group]
    rule: DedupRule
    method: str
    images: int
    checked: int  # rows whose neighbours were looked at (all, or the new ones)
    k: int
    reused: bool = False  # the graph kept with the store was up to date
    notes: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return sum(len(g.remove) for g in self.groups)


def group_graph(graph: Graph, vectors: np.ndarray, scorer: Scorer, threshold: float
                ) -> list[list[int]]:
    """Complete-linkage groups from a k-NN graph: every member of a group scores at or above
    ``threshold`` with every other member. Seeds are the rows with the most above-threshold
    neighbours (then the highest score sum, then the lowest row)."""
    keep = (graph.indices >= 0) & (graph.scores >= threshold)
    src = np.repeat(graph.rows, keep.sum(1))
    dst = graph.indices[keep]
    sc = graph.scores[keep]
    if len(src) == 0:
        return []
    # Symmetrise: an edge found from either side counts (the score is symmetric).
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    s = np.concatenate([sc, sc])
    order = np.lexsort((-s, a))
    a, b, s = a[order], b[order], s[order]
    pair = np.stack([a, b], 1)
    _, first = np.unique(pair, axis=0, return_index=True)
    first.sort()
    a, b, s = a[first], b[first], s[first]
    nodes, starts, degree = np.unique(a, return_index=True, return_counts=True)
    strength = np.add.reduceat(s, starts)
    seeds = nodes[np.lexsort((nodes, -strength, -degree))]
    where = {int(n): (int(st), int(d)) for n, st, d in zip(nodes, starts, degree, strict=True)}
    assigned: set[int] = set()
    groups: list[list[int]] = []
    for seed in seeds.tolist():
        if seed in assigned:
            continue
        st, d = where[seed]
        cands = [int(j) for j in b[st:st + d] if int(j) not in assigned]  # best score first
        if not cands:
            continue
        members = [seed, *cands]
        sims = pair_scores(vectors, scorer, members)
        # Greedy clique: next, the candidate whose *lowest* score to the members so far is
        # highest. Taken by score to the seed alone, one weak copy (a half-size JPEG-30) got
        # in early and then shut out a crop that agreed with every other member.
        chosen = [0]
        lowest = sims[0].copy()
        lowest[0] = -np.inf
        while True:
            c = int(np.argmax(lowest))  # ties: the candidate closest to the seed
            if lowest[c] < threshold:
                break
            chosen.append(c)
            lowest = np.minimum(lowest, sims[c])
            lowest[chosen] = -np.inf
        if len(chosen) > 1:
            group = [members[c] for c in chosen]
            assigned.update(group)
            groups.append(group)
    return groups


def _choose_keep(group: list[int], stored: StoredVectors, keep: str) -> int:
    if keep == "largest":
        return max(group, key=lambda i: (int(stored.sizes[i]), -i))
    if keep == "oldest":
        return min(group, key=lambda i: (int(stored.mtimes_ns[i]), i))
    return min(group)


def _decide(groups: list[list[int]], stored: StoredVectors, scorer: Scorer, keep: str
            ) -> list[Group]:
    if keep not in KEEP_RULES:
        raise DedupError(f"unknown keep rule {keep!r}; use one of {KEEP_RULES}")
    out = []
    for members in groups:
        kept = _choose_keep(members, stored, keep)
        rest = sorted(i for i in members if i != kept)
        unit = scorer(stored.vectors[[kept, *rest]])
        sims = unit[1:] @ unit[0]
        order = np.argsort(-sims, kind="stable")
        out.append(Group(kept, [rest[i] for i in order], [float(sims[i]) for i in order]))
    return sorted(out, key=lambda g: (-len(g.remove), g.keep))


# --- state kept with the store -----------------------------------------------------------------
def row_keys(stored: StoredVectors) -> np.ndarray:
    """A 63-bit id of each row's (path, size, mtime): what ``--new`` has seen before."""
    out = np.empty(len(stored.paths), np.int64)
    for i, (p, s, m) in enumerate(zip(stored.paths, stored.sizes.tolist(),
                                      stored.mtimes_ns.tolist(), strict=True)):
        digest = hashlib.blake2b(f"{p}\0{s}\0{m}".encode("utf-8", "surrogateescape"),
                                 digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") >> 1
    return out


def _signature(output: str | Path) -> dict:
    return store_signature(output)


def _state_dir(output: str | Path) -> Path:
    return store_paths(output)[0] / STATE_DIR


def _identity(stored: StoredVectors, rule: DedupRule) -> dict:
    meta = stored.meta
    return {"model": meta.get("model"), "fingerprint": meta.get("fingerprint"),
            "dim": int(stored.vectors.shape[1]), "score": rule.score}


def _load_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _save(folder: Path, state: dict, arrays: dict[str, np.ndarray], index=None) -> None:
    """Best effort: a store on read-only media still dedups, in memory only."""
    try:
        folder.mkdir(exist_ok=True)
        atomic_write(folder / "graph.npz", lambda tmp: _savez(tmp, arrays))
        if index is not None:
            atomic_write(folder / "index.usearch", lambda tmp: index.save(str(tmp)))
        elif (folder / "index.usearch").exists():
            (folder / "index.usearch").unlink()
        atomic_write_text(folder / "state.json", json.dumps(state))
    except OSError as e:
        log.warning("could not keep the dedup graph in %s (%s); it is rebuilt next time",
                    folder, e)


def _savez(tmp: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_arrays(folder: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(folder / "graph.npz", allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError):
        return None


def forget(output: str | Path) -> None:
    """Delete the dedup state kept with a store (the next ``dedup`` starts over)."""
    shutil.rmtree(_state_dir(output), ignore_errors=True)


# --- the entry point ---------------------------------------------------------------------------
def find_duplicates(output: str | Path, stored: StoredVectors, rule: DedupRule, *,
                    keep: str = "largest", k: int = DEFAULT_K, method: str = "auto",
                    new: bool = False) -> DedupResult:
    """Near-duplicate groups of a store (``stored`` = :func:`read_store` of ``output``).

    Uses and updates the graph kept in ``output``'s ``_dedup/`` folder. ``new``: only rows
    added since the last run are looked at (against every row); without a last run, all
    are. Raises :class:`DedupError` for an empty store or bad arguments.
    """
    check_threshold(rule.threshold)
    if keep not in KEEP_RULES:
        raise DedupError(f"unknown keep rule {keep!r}; use one of {KEEP_RULES}")
    if k < 1:
        raise DedupError(f"k must be 1 or more, not {k}")
    n = len(stored.paths)
    if n == 0:
        raise StoreError(f"{output} holds no vectors: nothing to deduplicate (run "
                         "`mobilevec embed ... -o` first, or check its errors file)")
    method = _method(method, n)
    folder = _state_dir(output)
    identity = {**_identity(stored, rule), "k": k, "method": method}
    signature = _signature(output)
    state = _load_state(folder)
    same_model = state is not None and state.get("identity") == identity
    arrays = _load_arrays(folder) if same_model else None
    keys = row_keys(stored)
    notes: list[str] = []
    if new and arrays is None:
        notes.append("no earlier dedup of this store (or one with other settings): all "
                     "images were checked")
        new = False
    if new:
        result = _dedup_new(stored, rule, keep, k, method, keys, arrays, folder, identity,
                            signature)
        result.notes += notes
        return result
    if arrays is not None and state.get("signature") == signature and "indices" in arrays:
        scorer = Scorer(rule.score, arrays.get("mean"))
        graph = Graph(np.arange(n), arrays["indices"], arrays["scores"], method)
        reused = True
    else:
        scorer = Scorer.fit(rule.score, stored.vectors)
        graph, index, placement, bucket_of = _full_graph(stored.vectors, scorer, k, method,
                                                         keys)
        mean = scorer.mean if scorer.mean is not None else np.zeros(0, np.float32)
        saved = {"indices": graph.indices, "scores": graph.scores, "mean": mean,
                 "seen": np.sort(keys)}
        if isinstance(placement, Buckets):
            saved.update(_bucket_arrays(placement, keys, bucket_of))
        elif placement is not None:
            saved["basis"] = placement
        _save(folder, {"identity": identity, "signature": signature}, saved, index)
        reused = False
    groups = group_graph(graph, stored.vectors, scorer, rule.threshold)
    return DedupResult(_decide(groups, stored, scorer, keep), rule, method, n, n, k, reused,
                       notes)


def _full_graph(vectors: np.ndarray, scorer: Scorer, k: int, method: str, keys: np.ndarray):
    rows = np.arange(len(vectors))
    if method == "exact":
        return Graph(rows, *_exact_topk(vectors, rows, vectors, scorer, k), "exact"), None, \
            None, None
    if method == "buckets":
        buckets = fit_buckets(vectors, scorer)
        bucket_of = buckets.assign(vectors, scorer)
        log.info("k-NN graph of %d rows from %d buckets", len(vectors), len(buckets.centroids))
        graph = Graph(rows, *_bucket_topk(vectors, scorer, buckets, bucket_of, rows, k),
                      "buckets")
        return graph, None, buckets, bucket_of
    basis = _fit_projection(vectors, scorer, PROJECTED_DIM)
    if basis is None:
        basis = np.eye(vectors.shape[1], dtype=np.float32)
    projected = _project(vectors, scorer, basis)
    index = _new_index(projected.shape[1])
    log.info("building an HNSW index of %d projected vectors", len(vectors))
    _add(index, keys, projected)
    key_to_row = _key_lookup(keys)
    graph = Graph(rows, *_rescore(index, projected, rows, vectors, scorer, key_to_row, k),
                  "usearch")
    return graph, index, basis, None


def _bucket_arrays(buckets: Buckets, keys: np.ndarray, bucket_of: np.ndarray) -> dict:
    out = {"centroids": buckets.centroids, "probe": buckets.probe, "bucket_keys": keys,
           "bucket": bucket_of}
    if buckets.basis is not None:
        out["basis"] = buckets.basis
    return out


def _key_lookup(keys: np.ndarray):
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]

    def lookup(found: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(sorted_keys, found), 0, len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == found, order[pos], -1).astype(np.int64)

    return lookup


def _dedup_new(stored: StoredVectors, rule: DedupRule, keep: str, k: int, method: str,
               keys: np.ndarray, arrays: dict, folder: Path, identity: dict,
               signature: dict) -> DedupResult:
    seen = arrays["seen"]
    pos = np.clip(np.searchsorted(seen, keys), 0, max(len(seen) - 1, 0))
    is_new = (seen[pos] != keys) if len(seen) else np.ones(len(keys), bool)
    new_rows = np.nonzero(is_new)[0]
    mean = arrays.get("mean")
    scorer = Scorer(rule.score, mean if mean is not None and len(mean) else None)
    index = None
    extra: dict[str, np.ndarray] = {}
    if method == "exact" or len(new_rows) == 0:
        graph = Graph(new_rows, *_exact_topk(stored.vectors[new_rows], new_rows,
                                             stored.vectors, scorer, k), "exact")
    elif method == "buckets":
        buckets = Buckets(arrays.get("basis"), arrays["centroids"], arrays["probe"])
        known = _key_lookup(arrays["bucket_keys"])(keys)  # position in the saved rows
        bucket_of = arrays["bucket"][np.maximum(known, 0)]
        fresh = np.nonzero(known < 0)[0]  # new rows (and any the last run did not place)
        bucket_of[fresh] = buckets.assign(stored.vectors[fresh], scorer)
        graph = Graph(new_rows, *_bucket_topk(stored.vectors, scorer, buckets, bucket_of,
                                              new_rows, k), "buckets")
        extra = {"bucket_keys": np.concatenate([arrays["bucket_keys"], keys[fresh]]),
                 "bucket": np.concatenate([arrays["bucket"], bucket_of[fresh]])}
    else:
        Index = usearch_index()
        basis = arrays["basis"]
        index = Index.restore(str(folder / "index.usearch"), view=False)
        if index is None:
            raise DedupError(f"{folder / 'index.usearch'} is missing or damaged; run dedup "
                             "without --new to rebuild it")
        projected = _project(stored.vectors[new_rows], scorer, basis)
        _add(index, keys[new_rows], projected)
        graph = Graph(new_rows, *_rescore(index, projected, new_rows, stored.vectors, scorer,
                                          _key_lookup(keys), k), "usearch")
    groups = group_graph(graph, stored.vectors, scorer, rule.threshold)
    new_set = set(new_rows.tolist())
    groups = [g for g in groups if new_set.intersection(g)]
    saved = {name: value for name, value in arrays.items() if name not in ("indices", "scores")}
    saved["seen"] = np.union1d(seen, keys[new_rows])
    saved.update(extra)
    # The full graph is stale now; the next full dedup rebuilds it (with a fresh mean).
    _save(folder, {"identity": identity, "signature": None}, saved, index)
    return DedupResult(_decide(groups, stored, scorer, keep), rule, graph.method,
                       len(stored.paths), len(new_rows), k)


def top_neighbours(output: str | Path, stored: StoredVectors, rule: DedupRule,
                   k: int = DEFAULT_K, method: str = "auto") -> Graph:
    """Every row's ``k`` best-scoring other rows under ``rule``'s score (the graph that
    ``dedup`` keeps; reused when up to date, else built and kept)."""
    if len(stored.paths) == 0:
        raise StoreError(f"{output} holds no vectors: no neighbours to list")
    method = _method(method, len(stored.paths))
    folder = _state_dir(output)
    identity = {**_identity(stored, rule), "k": k, "method": method}
    state = _load_state(folder)
    if state is not None and state.get("identity") == identity \
            and state.get("signature") == _signature(output):
        arrays = _load_arrays(folder)
        if arrays is not None and "indices" in arrays:
            return Graph(np.arange(len(stored.paths)), arrays["indices"], arrays["scores"],
                         method)
    # find_duplicates builds and keeps the graph; the groups are a cheap by-product.
    find_duplicates(output, stored, rule, k=k, method=method)
    arrays = _load_arrays(folder)
    if arrays is None or "indices" not in arrays:  # read-only store: build in memory
        scorer = Scorer.fit(rule.score, stored.vectors)
        return knn_graph(stored.vectors, scorer, k, method)
    return Graph(np.arange(len(stored.paths)), arrays["indices"], arrays["scores"], method)


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
