"""TF-Slim name mapping, the safetensors format, and failure paths of the loaders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import mobilevec
from mobilevec.formats.safetensors_format import read_safetensors, write_safetensors
from mobilevec.models.names import (
    model_variables,
    tf_to_torch,
    to_tf_variables,
    torch_to_tf,
    variable_names,
)

NAMES = mobilevec.list_models()


def test_layout_transforms_put_each_tf_element_where_torch_expects_it():
    hwio = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    oihw = tf_to_torch(hwio, "conv")
    assert oihw.shape == (5, 4, 2, 3) and oihw[4, 3, 1, 2] == hwio[1, 2, 3, 4]
    dw = np.arange(3 * 3 * 7, dtype=np.float32).reshape(3, 3, 7, 1)
    assert tf_to_torch(dw, "depthwise")[6, 0, 2, 1] == dw[2, 1, 6, 0]
    logits = np.arange(6 * 4, dtype=np.float32).reshape(1, 1, 6, 4)
    assert tf_to_torch(logits, "classifier")[3, 5] == logits[0, 0, 5, 3]
    for array, layout in ((hwio, "conv"), (dw, "depthwise"), (logits, "classifier")):
        assert np.array_equal(torch_to_tf(tf_to_torch(array, layout), layout), array)


@pytest.mark.parametrize("name", NAMES)
def test_names_are_one_to_one_and_cover_the_state_dict(name):
    model = mobilevec.create(name)
    model.set_num_classes(1001, background_class=True)
    names = variable_names(model)
    assert len({v.tf_name for v in names}) == len(names)
    assert {v.torch_key for v in names} == {
        k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    root = model.config.spec.root_scope
    assert all(v.tf_name.startswith(root + "/") for v in names)
    # The shapes the architecture table gives (what infer_model compares) are the module's.
    state = model.state_dict()
    for v in model_variables(model.config, 1001):
        assert tuple(state[v.name.torch_key].shape) == v.torch_shape, v.name.tf_name
        assert torch_to_tf(state[v.name.torch_key].numpy(), v.name.layout).shape == v.tf_shape


def test_tf_slim_names_of_v3_small_follow_the_checkpoint_pattern():
    tf_names = {v.tf_name for v in variable_names(mobilevec.create("mobilenet_v3_small_075_224"))}
    for expected in ["MobilenetV3/Conv/weights", "MobilenetV3/Conv/BatchNorm/gamma",
                     "MobilenetV3/expanded_conv/depthwise/depthwise_weights",
                     "MobilenetV3/expanded_conv/squeeze_excite/Conv/biases",
                     "MobilenetV3/expanded_conv_3/squeeze_excite/Conv_1/weights",
                     "MobilenetV3/expanded_conv_10/expand/BatchNorm/moving_variance",
                     "MobilenetV3/Conv_1/BatchNorm/beta", "MobilenetV3/Conv_2/biases"]:
        assert expected in tf_names
    assert "MobilenetV3/expanded_conv/expand/weights" not in tf_names  # 16 -> 16: no expand
    assert "MobilenetV3/Conv_2/BatchNorm/gamma" not in tf_names


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip_preserves_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = mobilevec.create(name)
    model.set_num_classes(1001, background_class=True)
    path = mobilevec.save(model, tmp_path / "m.safetensors")
    again = mobilevec.create(name, weights=path)
    assert again.classifier is not None and again.background_class
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    stored = read_safetensors(path)
    assert stored.keys() == to_tf_variables(model).keys()


def _saved(tmp_path, name="mobilenet_v3_small_075_224"):
    model = mobilevec.create(name)
    return to_tf_variables(model), tmp_path / "w.safetensors"


def test_missing_variable_is_named_with_the_file(tmp_path):
    variables, path = _saved(tmp_path)
    del variables["MobilenetV3/expanded_conv_4/project/BatchNorm/moving_mean"]
    write_safetensors(variables, path)
    with pytest.raises(mobilevec.WeightsError) as e:
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)
    assert "expanded_conv_4/project/BatchNorm/moving_mean" in str(e.value)
    assert str(path) in str(e.value) and "missing" in str(e.value)


def test_misshaped_variable_is_named_with_both_shapes(tmp_path):
    variables, path = _saved(tmp_path)
    variables["MobilenetV3/Conv_1/weights"] = np.zeros((1, 1, 72, 400), np.float32)
    write_safetensors(variables, path)
    with pytest.raises(mobilevec.WeightsError, match=r"Conv_1/weights.*\(1, 1, 72, 400\).*"
                                                     r"\(1, 1, 72, 432\)"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)


def test_nan_weights_are_refused(tmp_path):
    variables, path = _saved(tmp_path)
    variables["MobilenetV3/Conv/BatchNorm/beta"][3] = np.nan
    write_safetensors(variables, path)
    with pytest.raises(mobilevec.WeightsError, match="Conv/BatchNorm/beta.*NaN"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)


def test_weights_of_another_family_are_refused(tmp_path):
    variables, path = _saved(tmp_path, "mobilenet_v2_035_224")
    write_safetensors(variables, path)
    with pytest.raises(mobilevec.WeightsError, match="MobilenetV2.*mobilenet_v3_small"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)


def test_a_wrong_multiplier_is_refused_before_anything_is_loaded(tmp_path):
    variables, path = _saved(tmp_path, "mobilenet_v3_small_100_224")
    write_safetensors(variables, path)
    with pytest.raises(mobilevec.WeightsError, match="is this artifact a mobilenet_v3_small_075"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)


@pytest.mark.parametrize("cut", [8, 100, 0.5])
def test_truncated_safetensors_names_the_file(tmp_path, cut):
    variables, path = _saved(tmp_path)
    write_safetensors(variables, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(mobilevec.WeightsError, match=str(path)):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)


def test_unrecognised_file_is_refused(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not weights at all\n")
    with pytest.raises(mobilevec.WeightsError, match="unrecognised weights format"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=path)
    with pytest.raises(mobilevec.WeightsError, match="no such file"):
        mobilevec.create("mobilenet_v3_small_075_224", weights=tmp_path / "absent.tflite")


def test_corrupt_npy_file_is_caught_by_the_manifest(tmp_path, v2_npy):
    copy = tmp_path / "npy"
    shutil.copytree(v2_npy, copy)
    manifest = v2_npy.with_name(v2_npy.name + ".MANIFEST.tsv")
    shutil.copy(manifest, tmp_path / "npy" / "MANIFEST.tsv")
    target = copy / "expanded_conv_5_project_weights.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(mobilevec.WeightsError, match="expanded_conv_5/project/weights.*sha256"):
        mobilevec.create("mobilenet_v2_100_224", weights=copy)


def test_truncated_keras_h5_names_the_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "k.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"Conv1"]
        f.create_group("Conv1").attrs["weight_names"] = [b"Conv1/kernel:0"]
        f["Conv1"].create_dataset("Conv1/kernel:0", data=np.ones((3, 3, 3, 32), np.float32))
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(mobilevec.WeightsError, match=str(path)):
        mobilevec.create("mobilenet_v2_100_224", weights=path)


def test_tf_checkpoint_fixture_builds_a_v2_035_with_its_ema_values(tmp_path):
    import sys
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    sys.path.insert(0, str(fixtures))
    try:
        from fixture_values import expected_checkpoint
    finally:
        sys.path.remove(str(fixtures))
    from_checkpoint = mobilevec.create("mobilenet_v2_035_224", weights=fixtures / "tf_ckpt_v2_035")
    raw = mobilevec.create("mobilenet_v2_035_224", weights=fixtures / "tf_ckpt_v2_035", ema=False)
    # The same values, written by safetensors instead of TF, give the same network.
    path = write_safetensors(expected_checkpoint(ema=True), tmp_path / "ema.safetensors")
    reference = mobilevec.create("mobilenet_v2_035_224", weights=path)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(from_checkpoint(x), reference(x))
        assert not torch.equal(from_checkpoint(x), raw(x))


@pytest.mark.parametrize("name", ["mobilenet_v2_035_224", "mobilenet_v2_140_224",
                                  "mobilenet_v3_small_075_224", "mobilenet_v3_large_100_224",
                                  "mobilenet_v3_small_minimalistic_100_224"])
def test_infer_model_recognises_a_variant_by_its_variable_shapes(name):
    from mobilevec.models.registry import infer_model

    variables = to_tf_variables(mobilevec.create(name))
    assert infer_model({k: v.shape for k, v in variables.items()}) == name
    assert infer_model({k: v.shape for k, v in variables.items()}, image_size=128) == \
        (name.replace("_224", "_128") if name.startswith("mobilenet_v2") else name)


def test_infer_model_refuses_unknown_shapes():
    from mobilevec.models.registry import infer_model

    with pytest.raises(mobilevec.UnknownModelError, match="match no known"):
        infer_model({"MobilenetV2/Conv/weights": (3, 3, 3, 7)})
