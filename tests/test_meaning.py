"""Real-weight features mean something: nearest neighbours on real photos beat chance."""

from __future__ import annotations

import numpy as np
import pytest
from shared_paths import V2_NPY, V3_TFLITE, require

import mobilevec
from mobilevec.embedding.batching import embed_files
from mobilevec.embedding.search import leave_one_out_accuracy


def labeled_photos(data_dir):
    folder = data_dir / "tf_flowers5"
    paths = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        pytest.skip(f"no photos under {folder}")
    return paths, np.array([p.parent.name for p in paths])


@pytest.mark.parametrize("name,weights", [("mobilenet_v2_100_224", V2_NPY),
                                          ("mobilenet_v3_small_075_224", V3_TFLITE)])
def test_leave_one_out_nearest_neighbour_is_far_above_chance(data_dir, name, weights):
    model = mobilevec.create(name, weights=require(weights))
    paths, labels = labeled_photos(data_dir)
    result = embed_files(model, paths)
    assert not result.errors
    accuracy = leave_one_out_accuracy(result.vectors, labels)
    print(f"{name}: leave-one-out 1-NN accuracy {accuracy:.3f} on {len(paths)} photos")
    # 5 balanced classes: chance is 0.2; independent references reach about 0.8.
    assert accuracy >= 0.6


def test_random_weights_do_not_reach_that_accuracy(data_dir):
    paths, labels = labeled_photos(data_dir)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(labels)
    vectors = embed_files(mobilevec.create("mobilenet_v3_small_075_224"), paths[:60]).vectors
    assert leave_one_out_accuracy(vectors, shuffled[:60]) < 0.5
