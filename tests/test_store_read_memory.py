"""`read_store` fills one array with every part's vectors: its peak memory is about the
vectors once, not the parts plus their concatenation (which made 10^6 x 1024 float16
rows cost 4 GB).

tracemalloc sees numpy's memory, not Arrow's: the .npy case measures the old double (about
2.1x the vectors before, 1.1x now); for Parquet, whose per-part copies were Arrow memory,
it checks the rows and the traced peak only."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mobilevec.embedding.store import VectorStore, read_store


@pytest.mark.parametrize("name", ["v.parquet", "v.npy"])
def test_reading_a_store_of_many_parts_holds_its_vectors_about_once(tmp_path, name):
    rng = np.random.default_rng(0)
    dim, per_part, parts = 1024, 2000, 4
    meta = {"model": "m", "fingerprint": "f", "dim": dim, "dtype": "float16",
            "normalize": False, "preprocessing": {}}
    out = tmp_path / name
    written = []
    for p in range(parts):
        block = rng.standard_normal((per_part, dim)).astype(np.float16)
        written.append(block)
        with VectorStore.open(out, meta) as store:
            keys = [(f"/img/{p}-{i}.jpg", i, i) for i in range(per_part)]
            store.append(keys, block, [])
            store.finish(merge=False)
    expected = np.concatenate(written)
    tracemalloc.start()
    try:
        stored = read_store(out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(stored.vectors, expected)  # every row, in order
    assert stored.vectors.dtype == np.float16
    assert stored.paths[per_part] == "/img/1-0.jpg"
    # Joining per-part arrays needs >= 2x the vectors; one filled array needs 1x plus a
    # row group and the keys (paths as Python strings).
    assert peak < 1.5 * expected.nbytes, (peak, expected.nbytes)
