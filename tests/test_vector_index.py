"""The usearch (HNSW) index behind ``search`` on large tables: agreement with exact search,
persistence beside the store, rebuild when the store changes."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevec.embedding import index as vector_index
from mobilevec.embedding.search import cosine_neighbours
from mobilevec.embedding.store import VectorStore, read_store

# Not importorskip: usearch imported before OpenVINO breaks OpenVINO in this process for
# the rest of the session (mobilevec.embedding.index.usearch_index imports them in order).
if not vector_index.index_available():
    pytest.skip("usearch not installed (pip install 'mobilevec[index]')",
                allow_module_level=True)


def clustered(n: int, dim: int = 48, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(
        np.float32)


def make_store(tmp_path, vectors: np.ndarray, name: str = "v.npy"):
    out = tmp_path / name
    meta = {"model": "m", "fingerprint": "f", "dim": vectors.shape[1], "dtype": "float32",
            "normalize": False, "preprocessing": {}}
    with VectorStore.open(out, meta) as store:
        store.append([(f"/img/{i}.jpg", i, i) for i in range(len(vectors))], vectors, [])
        store.finish()
    return out


def test_index_agrees_with_exact_search(tmp_path):
    vectors = clustered(3000)
    out = make_store(tmp_path, vectors)
    stored = read_store(out)
    queries = vectors[:200] + 0.01
    exact, exact_sims = cosine_neighbours(queries, stored.vectors, 10)
    approx, approx_sims, method = vector_index.neighbours(out, stored, queries, 10, "usearch")
    assert method == "usearch"
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    assert np.mean(approx[:, 0] == exact[:, 0]) >= 0.99
    np.testing.assert_allclose(approx_sims[:, 0], exact_sims[:, 0], atol=1e-4)


def test_index_is_saved_reused_and_rebuilt_when_the_store_changes(tmp_path, monkeypatch):
    vectors = clustered(500, seed=1)
    out = make_store(tmp_path, vectors)
    stored = read_store(out)
    vector_index.neighbours(out, stored, vectors[:1], 3, "usearch")
    root = out.with_name(out.name + ".parts")
    index_file = root / vector_index.INDEX_FILE
    assert index_file.is_file()
    built = []
    real_build = vector_index._build
    monkeypatch.setattr(vector_index, "_build", lambda v: built.append(len(v)) or real_build(v))
    vector_index.neighbours(out, stored, vectors[:1], 3, "usearch")
    assert built == [], "an up-to-date index is loaded, not rebuilt"

    more = clustered(50, seed=2)
    meta = read_store(out).meta
    with VectorStore.open(out, meta) as store:
        store.append([(f"/new/{i}.jpg", i, i) for i in range(50)], more, [])
        store.finish()
    stored = read_store(out)
    order, _, _ = vector_index.neighbours(out, stored, more[:1], 1, "usearch")
    assert built == [550]
    assert stored.paths[order[0, 0]] == "/new/0.jpg"


def test_auto_stays_exact_below_the_threshold(tmp_path):
    vectors = clustered(100, seed=3)
    out = make_store(tmp_path, vectors)
    _, _, method = vector_index.neighbours(out, read_store(out), vectors[:2], 5, "auto")
    assert method == "exact"
    assert not (out.with_name(out.name + ".parts") / vector_index.INDEX_FILE).exists()
