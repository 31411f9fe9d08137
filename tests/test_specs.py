"""Architecture tables and TF-Slim rules, checked against hand-computed values."""

import pytest
import torch

import mobilevec
from mobilevec.models.layers import SameConv2d, same_padding
from mobilevec.models.specs import ResolvedBlock, make_divisible


@pytest.mark.parametrize("value,expected", [
    (12, 16),   # 16 * 0.75: the nearest multiple of 8 is 16
    (18, 24),   # nearest is 16, but 16 < 0.9 * 18, so one more divisor
    (30, 32), (33.6, 32), (11.2, 16), (5.6, 8), (1280, 1280), (432, 432), (4, 8),
])
def test_make_divisible_follows_tf_slim_ten_percent_rule(value, expected):
    assert make_divisible(value, 8) == expected


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (193, 3, 2, (1, 1)), (193, 5, 2, (2, 2)),
    (7, 1, 1, (0, 0)), (56, 3, 1, (1, 1)), (1, 5, 2, (2, 2)),
])
def test_same_padding_puts_the_extra_pixel_after(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_same_conv_stride2_matches_hand_computed_tf_same():
    conv = SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF SAME on 4x4, k3 s2: pad 0 before, 1 after; windows start at rows/cols 0 and 2.
    grid = x[0, 0]
    expected = torch.tensor([[grid[0:3, 0:3].sum(), grid[0:3, 2:4].sum()],
                             [grid[2:4, 0:3].sum(), grid[2:4, 2:4].sum()]])
    assert torch.equal(conv(x)[0, 0], expected)


# (scope, expanded, squeeze, out) for V3 Small 0.75, as read off the TF Hub TFLite file
# (../shared/weights/PROVENANCE.md).
V3_SMALL_075 = [
    ("expanded_conv", 16, 8, 16), ("expanded_conv_1", 72, None, 24),
    ("expanded_conv_2", 88, None, 24), ("expanded_conv_3", 96, 24, 32),
    ("expanded_conv_4", 192, 48, 32), ("expanded_conv_5", 192, 48, 32),
    ("expanded_conv_6", 96, 24, 40), ("expanded_conv_7", 120, 32, 40),
    ("expanded_conv_8", 240, 64, 72), ("expanded_conv_9", 432, 112, 72),
    ("expanded_conv_10", 432, 112, 72),
]


def test_v3_small_075_widths_match_the_published_module():
    layers = {layer.spec.scope: layer for layer in
              mobilevec.get_config("mobilenet_v3_small_075_224").resolved_layers()}
    assert layers["Conv"].out_channels == 16
    for scope, expanded, squeeze, out in V3_SMALL_075:
        block = layers[scope]
        assert isinstance(block, ResolvedBlock)
        assert (block.expanded_channels, block.squeeze_channels, block.out_channels) == \
            (expanded, squeeze, out), scope
    assert layers["Conv_1"].out_channels == 432
    assert layers["Conv_2"].out_channels == 1024


def _count(model, with_bn_stats=True):
    n = sum(p.numel() for p in model.parameters())
    if with_bn_stats:
        n += sum(b.numel() for k, b in model.named_buffers() if "running" in k)
    return n


def test_v2_100_with_1001_logits_has_tf_slim_parameter_count():
    model = mobilevec.create("mobilenet_v2_100_224")
    model.set_num_classes(1001, background_class=True)
    assert _count(model) == 3_540_265  # TF-Slim checkpoint: 2,258,985 + 1,281,280 logits


def test_v3_small_075_trunk_parameter_count():
    # timm tf_mobilenetv3_small_075(num_classes=0), BN statistics excluded.
    assert _count(mobilevec.create("mobilenet_v3_small_075_224"), with_bn_stats=False) == 1_016_872


@pytest.mark.parametrize("name", mobilevec.list_models())
def test_every_registered_model_builds_and_gives_its_feature_vector(name):
    config = mobilevec.get_config(name)
    model = mobilevec.create(name)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 80))
    assert out.shape == (1, config.num_features)
    assert torch.isfinite(out).all()


def test_feature_sizes_follow_the_hub_cards():
    sizes = {n: mobilevec.get_config(n).num_features for n in mobilevec.list_models()}
    assert sizes["mobilenet_v2_035_224"] == 1280  # Conv_1 is not shrunk below 1.0
    assert sizes["mobilenet_v2_100_224"] == 1280
    assert sizes["mobilenet_v2_140_224"] == 1792
    assert sizes["mobilenet_v3_small_075_224"] == 1024  # Conv_2 is never multiplied
    assert sizes["mobilenet_v3_large_075_224"] == 1280


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(mobilevec.UnknownModelError, match="mobilenet_v2_100_224"):
        mobilevec.create("mobilenet_v9")
