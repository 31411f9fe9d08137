"""mobilevec vs Keras 3 applications (torch backend) holding the same random weights.

The Keras model is saved with Keras' own ``.h5`` writer and loaded through mobilevec's
``.h5`` reader, so this checks the reader, the name mapping, padding, BN and activations
against an implementation mobilevec did not write.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilevec

kr = pytest.importorskip("keras_reference")

TOLERANCE = 1e-4

CASES = [
    # (keras family, alpha, minimalistic, mobilevec name, input size)
    ("v2", 1.0, False, "mobilenet_v2_100_224", 224),
    ("v2", 1.0, False, "mobilenet_v2_100_224", 193),
    ("v3_small", 0.75, False, "mobilenet_v3_small_075_224", 224),
    ("v3_small", 0.75, False, "mobilenet_v3_small_075_224", 193),
    ("v3_large", 1.0, False, "mobilenet_v3_large_100_224", 224),
    ("v3_small", 1.0, True, "mobilenet_v3_small_minimalistic_100_224", 224),
    ("v2", 0.35, False, "mobilenet_v2_035_224", 224),
    ("v2", 1.4, False, "mobilenet_v2_140_224", 224),
]


@pytest.mark.parametrize("family,alpha,minimal,name,size", CASES,
                         ids=[f"{c[3]}@{c[4]}" for c in CASES])
def test_features_and_logits_match_keras(tmp_path, family, alpha, minimal, name, size):
    keras_model, keras_heads = kr.build(family, alpha, size, minimal)
    kr.set_tf_variables(keras_model, kr.calibrated_variables(name, seed=size),
                        mobilevec.get_config(name).spec.root_scope)
    path = tmp_path / "keras_model.h5"
    keras_model.save(path)

    model = mobilevec.create(name, weights=path)
    kr.use_keras_gate(model)
    x = kr.structured_images(2, size, seed=size)
    keras_features, keras_logits = kr.run(keras_heads, x)
    with torch.no_grad():
        features = model(torch.from_numpy(x))
        logits = model.classifier(features)

    assert features.shape[1] == keras_features.shape[1]
    assert np.abs(features.numpy() - keras_features).max() <= TOLERANCE
    assert np.abs(logits.numpy() - keras_logits).max() <= TOLERANCE
    # Not a vacuous comparison: outputs vary across the batch and are O(1).
    assert np.abs(keras_features[0] - keras_features[1]).max() > 1e-2


def _keras_family(name: str) -> tuple[str, float, bool]:
    config = mobilevec.get_config(name)
    family = {"mobilenet_v2": "v2", "mobilenet_v3_small": "v3_small",
              "mobilenet_v3_large": "v3_large"}[config.arch.removesuffix("_minimalistic")]
    return family, config.multiplier, config.arch.endswith("_minimalistic")


@pytest.mark.parametrize("name", mobilevec.list_models())
def test_every_model_matches_its_keras_application_at_a_cheap_size(tmp_path, name):
    size = 96
    family, alpha, minimal = _keras_family(name)
    keras_model, keras_heads = kr.build(family, alpha, size, minimal)
    kr.set_tf_variables(keras_model, kr.calibrated_variables(name, seed=7, size=size),
                        mobilevec.get_config(name).spec.root_scope)
    path = tmp_path / "keras_model.h5"
    keras_model.save(path)
    model = mobilevec.create(name, weights=path)
    kr.use_keras_gate(model)
    x = kr.structured_images(2, size, seed=3)
    keras_features, _ = kr.run(keras_heads, x)
    with torch.no_grad():
        features = model(torch.from_numpy(x)).numpy()
    assert np.abs(keras_features[0] - keras_features[1]).max() > 1e-2  # not vacuous
    assert np.abs(features - keras_features).max() <= TOLERANCE


def test_parameter_counts_match_keras():
    for family, alpha, minimal, name, _ in CASES[::2]:
        keras_model, _ = kr.build(family, alpha, 224, minimal)
        model = mobilevec.create(name)
        model.set_num_classes(1000)
        ours = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for k, b in model.named_buffers() if "running" in k)
        assert ours == keras_model.count_params(), name
