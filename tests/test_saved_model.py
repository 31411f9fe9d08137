"""SavedModel variables reader against a SavedModel written by real TensorFlow.

The fixture (tests/fixtures/tf_saved_model_v2_035, made by make_tf_fixtures.py) stores
TF-Slim-named variables under object-path keys; the reader must find the names again.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from mobilevec.errors import WeightsError
from mobilevec.formats import object_graph as og
from mobilevec.formats.saved_model import is_saved_model, read_saved_model
from mobilevec.formats.tf_checkpoint import read_tensor_bundle, read_tf_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = FIXTURES / "tf_saved_model_v2_035"


def _load_fixture_values():
    spec = importlib.util.spec_from_file_location("fixture_values", FIXTURES / "fixture_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fv = _load_fixture_values()


def _assert_bit_identical(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        assert actual[name].dtype == want.dtype, name
        assert actual[name].shape == want.shape, name
        assert actual[name].tobytes() == want.tobytes(), name


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT, tmp_path / "model")
    return tmp_path / "model"


def test_bundle_keys_are_object_paths_not_names():
    keys = set(read_tensor_bundle(ROOT / "variables" / "variables"))
    assert "variables/0/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "stem/kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert og.OBJECT_GRAPH_KEY in keys
    assert not [k for k in keys if k.startswith("MobilenetV2/")]


@pytest.mark.parametrize("path", [ROOT, ROOT / "variables", ROOT / "saved_model.pb", str(ROOT)],
                         ids=["root", "variables-dir", "saved_model.pb", "str"])
def test_resolves_to_tf_slim_names_bit_identical(path):
    _assert_bit_identical(read_saved_model(path), fv.expected_saved_model())
    assert is_saved_model(path)


def test_saved_model_pb_names_agree_with_object_graph_full_names():
    by_pb = og._saved_variable_names(ROOT)
    assert sorted(by_pb.values()) == sorted(fv.saved_model_variables())


def test_empty_full_names_fall_back_to_saved_model_pb(monkeypatch):
    parse = og._parse_object_graph

    def without_full_names(blob):
        nodes = parse(blob)
        for node in nodes:
            node.attributes = [(a, "", key) for a, _full, key in node.attributes]
        return nodes

    monkeypatch.setattr(og, "_parse_object_graph", without_full_names)
    _assert_bit_identical(read_saved_model(ROOT), fv.expected_saved_model())
    # A bare checkpoint has no saved_model.pb to consult: a clear error naming the key.
    with pytest.raises(WeightsError, match="no variable name") as info:
        read_tf_checkpoint(ROOT / "variables")
    assert info.value.variable.endswith("/.ATTRIBUTES/VARIABLE_VALUE")


def test_two_variables_with_one_name_is_an_error(monkeypatch):
    parse = og._parse_object_graph

    def same_names(blob):
        nodes = parse(blob)
        for node in nodes:
            node.attributes = [(a, "dup", key) for a, _full, key in node.attributes]
        return nodes

    monkeypatch.setattr(og, "_parse_object_graph", same_names)
    with pytest.raises(WeightsError, match="two variables are named 'dup'"):
        read_saved_model(ROOT)


def test_is_saved_model_rejects_other_things(tmp_path: Path):
    assert not is_saved_model(tmp_path)
    assert not is_saved_model(tmp_path / "missing")
    assert not is_saved_model(FIXTURES / "tf_ckpt_v2_035")


def test_not_a_saved_model_is_an_error(tmp_path: Path):
    with pytest.raises(WeightsError, match="not a SavedModel"):
        read_saved_model(tmp_path)


def test_missing_variables_index(model_copy: Path):
    (model_copy / "variables" / "variables.index").unlink()
    with pytest.raises(WeightsError, match="variables.index"):
        read_saved_model(model_copy)
    assert not is_saved_model(model_copy)


def test_corrupt_object_graph_is_caught_by_its_crc(model_copy: Path):
    from mobilevec.formats import tf_checkpoint as tfc

    prefix = model_copy / "variables" / "variables"
    _header, entries = tfc._read_index(Path(f"{prefix}.index"))
    entry = next(e for e in entries if e.name == og.OBJECT_GRAPH_KEY)
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 10] ^= 0x04
    data.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="crc32c") as info:
        read_saved_model(model_copy)
    assert info.value.variable == og.OBJECT_GRAPH_KEY
    assert info.value.path == str(data)


def test_truncated_variables_data(model_copy: Path):
    data = model_copy / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(WeightsError) as info:
        read_saved_model(model_copy)
    assert info.value.path == str(data)
