"""Transfer learning on real photos (flowers5: 5 classes x 60) with the real seed weights.

Reference (data README, independent reference models and a plain linear probe, 200 train /
100 validation): 0.58-0.65 validation accuracy for either seed model, chance 0.20.
Each model's features are computed once per session; the heads train on them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.data.datasets import read_class_folders, split_dataset
from mobilevec.embedding.batching import embed_files
from mobilevec.training.train import Classifier, TrainConfig, fit_head, train

SEEDS = {"v2": ("mobilenet_v2_100_224", "v2_npy"),
         "v3": ("mobilenet_v3_small_075_224", "v3_tflite")}
VAL_FRACTION = 1 / 3  # 200 train / 100 validation, as the reference probe


@pytest.fixture(scope="module")
def flowers(data_dir):
    data = read_class_folders(data_dir / "flowers5")
    train_files, val_files = split_dataset(data, VAL_FRACTION, seed=0)
    assert (len(train_files), len(val_files)) == (200, 100)
    return train_files, val_files


@pytest.fixture(scope="module")
def features(request, flowers):
    cache = {}

    def get(seed: str):
        if seed not in cache:
            name, weights_fixture = SEEDS[seed]
            model = mobilevec.create(name, weights=request.getfixturevalue(weights_fixture),
                                     trainable=False)
            out = []
            for files in flowers:
                result = embed_files(model, files.paths)
                assert not result.errors and result.paths == files.paths
                out += [torch.from_numpy(result.vectors), torch.from_numpy(files.labels)]
            cache[seed] = (model, *out)
        return cache[seed]

    return get


def _val_accuracy(model, train_x, train_y, val_x, val_y, config: TrainConfig) -> float:
    torch.manual_seed(0)
    classifier = Classifier(model, 5, config.dropout)
    fit = fit_head(classifier, train_x, train_y, val_x, val_y, config)
    return float((fit.val_logits.argmax(1) == val_y).float().mean())


@pytest.mark.parametrize("seed", ["v2", "v3"])
def test_frozen_head_reaches_the_reference_probe_accuracy(features, seed):
    model, train_x, train_y, val_x, val_y = features(seed)
    accuracy = _val_accuracy(model, train_x, train_y, val_x, val_y, TrainConfig(epochs=60))
    assert accuracy >= 0.55, f"{seed}: {accuracy:.3f}"


def test_head_trained_on_shuffled_labels_stays_near_chance(features):
    model, train_x, train_y, val_x, val_y = features("v3")
    shuffled = train_y[torch.from_numpy(np.random.default_rng(0).permutation(len(train_y)))]
    assert (shuffled != train_y).float().mean() > 0.6
    accuracy = _val_accuracy(model, train_x, shuffled, val_x, val_y, TrainConfig(epochs=60))
    assert accuracy <= 0.35, accuracy


def test_fine_tuning_a_few_epochs_keeps_accuracy(v3_tflite, data_dir, tmp_path):
    name, _ = SEEDS["v3"]
    backbone = mobilevec.create(name, weights=v3_tflite, trainable=True)
    # a small learning rate after a head warm-up; the TFLite weights carry folded BatchNorm,
    # so BatchNorm stays in inference mode (recorded in the run)
    config = TrainConfig(epochs=1, fine_tune=True, optimizer="adam", learning_rate=1e-5,
                         batch_size=16, head_warmup_epochs=30, val_fraction=VAL_FRACTION)
    result = train(backbone, data_dir / "flowers5", tmp_path / "run", config)
    accuracy = float((result.val_logits.argmax(1) == result.val_labels).mean())
    assert accuracy >= 0.50, accuracy
    spec = result.run.spec()
    assert spec["mode"] == "fine-tune" and spec["batch_norm"].startswith("inference mode")
