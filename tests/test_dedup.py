"""Near-duplicate grouping (mobilevec.embedding.dedup): no chaining, the ANN path agrees
with the exact one, and bad requests are refused. Vectors are hand-built, so the expected
groups follow from their construction, not from the code under test."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevec.embedding import dedup
from mobilevec.embedding.store import StoredVectors
from mobilevec.errors import DedupError, StoreError
from mobilevec.models.registry import DedupRule


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _planted_groups(seed: int) -> np.ndarray:
    """300 groups of 4 rows at cosine ~0.95 to their centre, then 1,800 unrelated rows."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((300, 256)))
    members = _unit(centres[:, None, :] + 0.02 * rng.standard_normal((300, 4, 256)))
    vectors = np.concatenate([members.reshape(-1, 256),
                              _unit(rng.standard_normal((1800, 256)))])
    return vectors


def _groups(vectors: np.ndarray, threshold: float, method: str = "exact", k: int = 8):
    scorer = dedup.Scorer.fit("cosine", vectors)
    graph = dedup.knn_graph(vectors, scorer, k=k, method=method)
    return sorted(sorted(g) for g in dedup.group_graph(graph, vectors, scorer, threshold))


def test_a_chain_does_not_merge_its_unrelated_ends():
    # A and C are orthogonal; B sits between them at cosine cos(45 deg) ~ 0.707 to each.
    a, c = np.eye(4, dtype=np.float32)[:2]
    b = _unit(a + c)
    vectors = np.stack([a, b, c, np.eye(4, dtype=np.float32)[3]])
    groups = _groups(vectors, threshold=0.7)
    assert all(not {0, 2} <= set(g) for g in groups), groups
    assert len(groups) == 1 and 1 in groups[0]  # B pairs with one end, never both


def test_transformed_copies_group_with_their_original_and_distractors_stay_alone():
    rng = np.random.default_rng(0)
    originals = _unit(rng.standard_normal((30, 64)))
    copies = _unit(originals[:, None, :] + 0.04 * rng.standard_normal((30, 3, 64)))
    distractors = _unit(rng.standard_normal((40, 64)))
    vectors = np.concatenate([originals, copies.reshape(-1, 64), distractors])
    expected = sorted(sorted([i, *(30 + 3 * i + j for j in range(3))]) for i in range(30))
    assert _groups(vectors, threshold=0.8) == expected


def test_the_ann_path_gives_the_groups_of_the_exact_path():
    # Not pytest.importorskip: importing usearch before OpenVINO breaks OpenVINO for the
    # rest of the session (see index.usearch_index); the library imports it in that order.
    if not dedup.available("usearch"):
        pytest.skip("usearch (the index extra) is not installed")
    vectors = _planted_groups(seed=1)
    exact = _groups(vectors, threshold=0.8, method="exact")
    assert len(exact) == 300
    assert _groups(vectors, threshold=0.8, method="usearch") == exact


@pytest.mark.parametrize("threshold", [2, -1.5, float("nan"), "high"])
def test_a_threshold_outside_minus_one_to_one_is_refused(threshold):
    with pytest.raises(DedupError, match="threshold"):
        dedup.check_threshold(threshold)


def test_a_store_of_another_model_is_refused():
    with pytest.raises(DedupError, match="mobilenet_v3_small_075_224"):
        dedup.rule_for({"model": "mobilenet_v3_small_075_224"}, model="mobilenet_v2_100_224")


def test_an_unknown_model_needs_an_explicit_threshold():
    with pytest.raises(DedupError, match="--threshold"):
        dedup.rule_for({"model": "somebody_elses_net"})
    assert dedup.rule_for({"model": "somebody_elses_net"}, threshold=0.9).threshold == 0.9


def test_an_empty_store_is_refused(tmp_path):
    empty = StoredVectors([], np.zeros(0, np.int64), np.zeros(0, np.int64),
                          np.zeros((0, 1024), np.float32), {"model": "mobilenet_v3_small_075_224"})
    with pytest.raises(StoreError, match="no vectors"):
        dedup.find_duplicates(tmp_path / "out.parquet", empty, DedupRule("cosine", 0.9))


def test_a_centred_score_still_pairs_the_only_two_images_of_a_tiny_collection():
    # Centred on their own mean, two images are always opposite (score -1); a tiny
    # collection's mean is shrunk, so two near-identical vectors stay near-duplicates.
    rng = np.random.default_rng(2)
    a = np.abs(rng.standard_normal(1280)).astype(np.float32)  # non-negative, like V2's
    b = a + 0.05 * np.abs(rng.standard_normal(1280)).astype(np.float32)
    pair = np.stack([a, b])
    cosine = float(_unit(a) @ _unit(b))
    assert cosine > 0.99
    scorer = dedup.Scorer.fit("centred", pair)
    assert dedup.pair_scores(pair, scorer, [0, 1])[0, 1] > 0.9
    # A large collection is centred nearly on its own mean.
    many = np.abs(rng.standard_normal((2000, 64))).astype(np.float32)
    plain = dedup.collection_mean(many)
    np.testing.assert_allclose(dedup.Scorer.fit("centred", many).mean, plain, rtol=0.01)


def test_openvino_still_reads_models_after_a_dedup_built_an_index(tmp_path):
    """usearch imported first used to leave OpenVINO unable to read any IR in the process."""
    import subprocess
    import sys

    if not (dedup.available("usearch") and dedup.available("openvino")):
        pytest.skip("needs usearch and openvino")
    script = (
        "import numpy as np\n"
        "from mobilevec.embedding import dedup\n"
        "v = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)\n"
        "dedup.knn_graph(v, dedup.Scorer.fit('cosine', v), k=3, method='usearch')\n"
        "import openvino as ov\n"
        "from openvino import opset13 as ops\n"
        "x = ops.parameter([1, 3], np.float32)\n"
        f"ov.save_model(ov.Model([ops.relu(x)], [x]), r'{tmp_path}/m.xml')\n"
        f"ov.Core().read_model(r'{tmp_path}/m.xml')\n"
        "print('read')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "read" in done.stdout, done.stderr[-2000:]


def test_the_bucket_path_gives_the_groups_of_the_exact_path(monkeypatch):
    # 32 buckets of ~100 rows, each compared with its 3 nearest: most pairs of rows are
    # never scored, the near-duplicate ones all are.
    monkeypatch.setattr(dedup, "BUCKET_ROWS", 100)
    vectors = _planted_groups(seed=3)
    exact = _groups(vectors, threshold=0.8, method="exact")
    assert len(exact) == 300
    assert _groups(vectors, threshold=0.8, method="buckets") == exact
