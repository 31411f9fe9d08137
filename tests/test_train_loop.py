"""Training-loop pieces: schedules, augmentation, early stopping, folded-BatchNorm detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from train_data import class_tree

import mobilevec
from mobilevec.data.augment import random_resized_crop
from mobilevec.training.train import (
    TrainConfig,
    batch_norm_is_folded,
    learning_rate_at,
    train,
    trained_variables,
)


def test_cosine_and_step_schedules_by_hand():
    cosine = TrainConfig(epochs=4, learning_rate=0.1)
    by_hand = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert by_hand[2] == pytest.approx(0.05)
    assert [learning_rate_at(cosine, e) for e in range(4)] == pytest.approx(by_hand)
    step = TrainConfig(epochs=9, learning_rate=1.0, schedule="step", step_epochs=3, step_gamma=0.5)
    assert [learning_rate_at(step, e) for e in (0, 2, 3, 5, 6, 8)] == pytest.approx(
        [1, 1, 0.5, 0.5, 0.25, 0.25])
    assert learning_rate_at(TrainConfig(schedule="constant", learning_rate=0.3), 7) == 0.3


def test_random_resized_crop_is_a_seeded_window_of_the_image():
    # a horizontal ramp: every crop + resize keeps values inside the window's range
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))
    out = random_resized_crop(ramp, (32, 48), np.random.default_rng(1), scale=(0.2, 0.5),
                              flip=False)
    assert out.shape == (3, 32, 48) and out.dtype == np.float32
    width = (out[0].max() - out[0].min()) * 255
    assert 200 * math.sqrt(0.2 * 0.5 * 0.75) - 2 < width < 200 * math.sqrt(0.5 * 4 / 3) * 2
    assert np.all(np.diff(out[0], axis=1) >= 0)  # not mirrored: the ramp still rises
    again = random_resized_crop(ramp, (32, 48), np.random.default_rng(1), scale=(0.2, 0.5),
                                flip=False)
    assert np.array_equal(out, again)
    flips = [random_resized_crop(ramp, (8, 8), np.random.default_rng(s), scale=(1, 1))
             for s in range(40)]
    mirrored = sum(bool(f[0, 0, 0] > f[0, 0, -1]) for f in flips)
    assert 8 < mirrored < 32  # about half


def test_early_stopping_keeps_the_lowest_validation_loss(tmp_path):
    tree = class_tree(tmp_path / "data", per_class=6)
    torch.manual_seed(0)
    model = mobilevec.create("mobilenet_v3_small_075_224", trainable=False)
    config = TrainConfig(epochs=100, patience=3, learning_rate=0.5, schedule="constant",
                         image_size=32)
    result = train(model, tree, tmp_path / "run", config, workers=0)
    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early and len(losses) < 100
    assert result.best_epoch == int(np.argmin(losses)) + 1 == len(losses) - 3
    kept = float(torch.nn.functional.cross_entropy(torch.from_numpy(result.val_logits),
                                                   torch.from_numpy(result.val_labels)))
    assert kept == pytest.approx(min(losses), rel=1e-5)


def test_folded_batch_norm_is_recognised_only_in_folded_weights(v3_tflite, v2_npy):
    assert batch_norm_is_folded(mobilevec.create("mobilenet_v3_small_075_224",
                                                 weights=v3_tflite))
    assert not batch_norm_is_folded(mobilevec.create("mobilenet_v2_100_224", weights=v2_npy))
    assert not batch_norm_is_folded(mobilevec.create("mobilenet_v3_small_075_224"))


@pytest.mark.parametrize("fine_tune", [False, True])
def test_best_epoch_snapshot_does_not_follow_later_training(fine_tune):
    model = mobilevec.create("mobilenet_v3_small_075_224", trainable=fine_tune)
    model.set_num_classes(3)
    snapshot = trained_variables(model, fine_tune)
    frozen = {k: v.copy() for k, v in snapshot.items()}
    with torch.no_grad():  # what the following epochs do to the live tensors, in place
        for p in model.parameters():
            p.add_(1.0)
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.mul_(2.0)
    assert snapshot.keys() == frozen.keys()
    for key, value in frozen.items():
        assert np.array_equal(snapshot[key], value), key
