"""BatchNorm while training: hub.KerasLayer's `trainable` semantics and TF's update rule.

The reference is TF's fused batch norm (what TF-Slim and Keras run on conv feature maps),
computed here by hand with numpy from the inputs each BN layer actually saw:
  moving_mean     <- d * moving_mean     + (1 - d) * mean(x)
  moving_variance <- d * moving_variance + (1 - d) * var(x) * n / (n - 1)
and the batch itself normalised with the biased variance var(x).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mobilevec
from mobilevec.data.augment import DecodedImages
from mobilevec.training.train import Classifier, TrainConfig, build_optimizer, image_epoch

SIZE = (64, 64)
MODEL = "mobilenet_v3_small_075_224"


def _images(count: int, seed: int = 0) -> DecodedImages:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (48 + i, 56, 3), dtype=np.uint8) for i in range(count)]
    return DecodedImages([], images, np.arange(count, dtype=np.int64) % 3)


def _batch_norms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _stats(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: (bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())
            for name, bn in _batch_norms(model).items()}


def _fine_tune_classifier(tf_momentum: float) -> Classifier:
    torch.manual_seed(0)
    backbone = mobilevec.create(MODEL, trainable=True, batch_norm_momentum=tf_momentum)
    return Classifier(backbone, 3, dropout=0.0)


def test_tf_momentum_is_one_minus_torch_momentum():
    model = mobilevec.create(MODEL, batch_norm_momentum=0.997)
    momenta = {bn.momentum for bn in _batch_norms(model).values()}
    assert len(momenta) == 1 and momenta.pop() == pytest.approx(0.003)


def test_seed_card_default_momenta_v3_099_v2_0997():
    v3 = mobilevec.create(MODEL)
    v2 = mobilevec.create("mobilenet_v2_100_224")
    assert all(bn.momentum == pytest.approx(0.01) for bn in _batch_norms(v3).values())
    assert all(bn.momentum == pytest.approx(0.003) for bn in _batch_norms(v2).values())


def test_frozen_backbone_keeps_weights_and_inference_batch_norm_while_training():
    torch.manual_seed(0)
    backbone = mobilevec.create(MODEL, trainable=False)
    classifier = Classifier(backbone, 3, dropout=0.0)
    config = TrainConfig(batch_size=4, augment=True, learning_rate=0.1)
    optimizer = build_optimizer(classifier, config)
    before = {k: v.clone() for k, v in backbone.state_dict().items()
              if not k.startswith("classifier")}
    head_before = backbone.classifier.weight.detach().clone()
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        eval_features = backbone.eval().features(x)
    image_epoch(classifier, optimizer, _images(8), config, SIZE, np.random.default_rng(0))
    assert classifier.training and backbone.training
    assert not any(bn.training for bn in _batch_norms(backbone).values())
    after = backbone.state_dict()
    for key, value in before.items():  # weights and moving statistics alike
        assert torch.equal(after[key], value), key
    assert not torch.equal(backbone.classifier.weight, head_before)
    # in train mode the frozen backbone computes exactly its inference features
    with torch.no_grad():
        assert torch.equal(backbone.features(x), eval_features)


@pytest.mark.parametrize("tf_momentum", [0.9, 0.997])
def test_fine_tune_moving_averages_follow_tf_rule_over_steps(tf_momentum):
    classifier = _fine_tune_classifier(tf_momentum)
    backbone = classifier.backbone
    config = TrainConfig(fine_tune=True, batch_size=4, augment=False, learning_rate=0.05)
    optimizer = build_optimizer(classifier, config)
    expected = {name: (m.astype(np.float64), v.astype(np.float64))
                for name, (m, v) in _stats(backbone).items()}
    seen: list[tuple[str, np.ndarray]] = []
    hooks = [bn.register_forward_pre_hook(
                 lambda mod, args, name=name: seen.append((name, args[0].detach().numpy().copy())))
             for name, bn in _batch_norms(backbone).items()]
    try:
        for epoch in range(2):  # 6 images in batches of 4: 2 steps per epoch (4 and 2)
            image_epoch(classifier, optimizer, _images(6), config, SIZE,
                        np.random.default_rng(epoch))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 4 * len(expected)
    d = tf_momentum
    for name, x in seen:
        x = x.astype(np.float64)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(axis=(0, 2, 3))
        unbiased = ((x - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (n - 1)
        moving_mean, moving_var = expected[name]
        expected[name] = (d * moving_mean + (1 - d) * mean, d * moving_var + (1 - d) * unbiased)
    got = _stats(backbone)
    changed = 0
    for name, (mean, var) in expected.items():
        np.testing.assert_allclose(got[name][0], mean, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[name][1], var, rtol=1e-4, atol=1e-5, err_msg=name)
        changed += not np.allclose(var, 1.0)
    assert changed == len(expected)  # every layer moved away from its initial statistics


def test_fine_tune_normalises_each_batch_with_its_biased_variance():
    classifier = _fine_tune_classifier(0.99)
    backbone = classifier.backbone.train()
    bn = backbone.layers["Conv"].bn
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    captured = {}
    hook = bn.register_forward_hook(
        lambda mod, args, out: captured.update(x=args[0].detach().numpy().astype(np.float64),
                                               y=out.detach().numpy()))
    try:
        backbone.features(torch.rand(3, 3, *SIZE))
    finally:
        hook.remove()
    x = captured["x"]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    biased = x.var(axis=(0, 2, 3), keepdims=True)
    gamma = bn.weight.detach().numpy().astype(np.float64)[None, :, None, None]
    beta = bn.bias.detach().numpy().astype(np.float64)[None, :, None, None]
    expected = gamma * (x - mean) / np.sqrt(biased + 1e-3) + beta
    np.testing.assert_allclose(captured["y"], expected, rtol=1e-4, atol=1e-4)
