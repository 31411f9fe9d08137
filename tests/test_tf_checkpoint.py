"""TensorBundle checkpoint reader against checkpoints written by real TensorFlow.

The fixtures under tests/fixtures/ were written by tests/fixtures/make_tf_fixtures.py with
TF's own writers; their values are recomputed here by fixture_values.py, without TF.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from mobilevec.errors import WeightsError
from mobilevec.formats import tf_checkpoint as tfc
from mobilevec.formats.tf_checkpoint import (
    crc32c,
    is_tensor_bundle,
    read_tensor_bundle,
    read_tf_checkpoint,
    select_variables,
)

FIXTURES = Path(__file__).parent / "fixtures"
CKPT_DIR = FIXTURES / "tf_ckpt_v2_035"
PREFIX = CKPT_DIR / "model.ckpt"
DATA = CKPT_DIR / "model.ckpt.data-00000-of-00001"
INDEX = CKPT_DIR / "model.ckpt.index"
MISC = FIXTURES / "tf_bundle_misc"


def _load_fixture_values():
    spec = importlib.util.spec_from_file_location("fixture_values", FIXTURES / "fixture_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fv = _load_fixture_values()


def _assert_bit_identical(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name


@pytest.fixture
def ckpt_copy(tmp_path: Path) -> Path:
    """A private copy of the checkpoint fixture to damage; returns its prefix."""
    for f in (INDEX, DATA):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "model.ckpt"


def _entry(name: str, index: Path = INDEX):
    _header, entries = tfc._read_index(index)
    return next(e for e in entries if e.name == name)


# --- crc32c ---------------------------------------------------------------------------------

CRC_VECTORS = [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize(("data", "expected"), CRC_VECTORS)
def test_crc32c_matches_known_vectors(data, expected):
    assert crc32c(data) == expected
    assert tfc._crc32c_portable(data) == expected


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 8193, 70_000, 1 << 20])
def test_crc32c_numpy_path_equals_bytewise_definition(size):
    data = np.random.PCG64(size).random_raw((size + 7) // 8).tobytes()[:size]
    bytewise = tfc._update_python(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert tfc._crc32c_portable(data) == bytewise
    assert crc32c(data) == bytewise


def test_crc32c_extends_like_tf():
    data = bytes(range(256)) * 100
    assert crc32c(data[9000:], crc32c(data[:9000])) == crc32c(data)
    assert tfc._crc32c_portable(data[77:], tfc._crc32c_portable(data[:77])) == crc32c(data)


def test_masked_crc_round_trips_and_differs():
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert tfc.unmask_crc(tfc.mask_crc(value)) == value
    assert tfc.mask_crc(0xE3069283) != 0xE3069283


# --- values ---------------------------------------------------------------------------------


def test_ema_values_are_returned_by_default():
    _assert_bit_identical(read_tf_checkpoint(PREFIX), fv.expected_checkpoint(ema=True))


def test_ema_false_returns_raw_training_values():
    _assert_bit_identical(read_tf_checkpoint(PREFIX, ema=False), fv.expected_checkpoint(ema=False))


def test_ema_twins_slots_and_global_step_never_returned():
    for ema in (True, False):
        names = read_tf_checkpoint(PREFIX, ema=ema)
        assert not [n for n in names if "ExponentialMovingAverage" in n]
        assert not set(names) & set(fv.SLOT_VARIABLES)
        assert "global_step" not in names


def test_read_tensor_bundle_returns_every_key_as_stored():
    stored = read_tensor_bundle(PREFIX)
    variables = fv.mobilenet_v2_variables()
    expected_keys = (set(variables) | {n + tfc.EMA_SUFFIX for n in variables}
                     | set(fv.SLOT_VARIABLES) | {"global_step"})
    assert set(stored) == expected_keys
    assert stored["global_step"].dtype == np.int64
    assert stored["global_step"].item() == fv.GLOBAL_STEP
    for name, shape in fv.SLOT_VARIABLES.items():
        assert stored[name].tobytes() == fv.fixture_array(name, shape).tobytes()


def test_shapes_follow_tf_slim_v2_035():
    weights = read_tf_checkpoint(PREFIX)
    assert weights["MobilenetV2/Conv/weights"].shape == (3, 3, 3, 16)
    assert weights["MobilenetV2/expanded_conv/depthwise/depthwise_weights"].shape == (3, 3, 16, 1)
    assert weights["MobilenetV2/expanded_conv_16/project/weights"].shape == (1, 1, 336, 112)
    assert weights["MobilenetV2/Conv_1/weights"].shape == (1, 1, 112, 1280)
    assert "MobilenetV2/expanded_conv/expand/weights" not in weights
    assert len(weights) == 260


def test_every_supported_dtype_and_two_data_shards():
    stored = read_tensor_bundle(MISC / "dtypes")
    assert tfc._read_index(MISC / "dtypes.index")[0].num_shards == 2
    expected = {name: fv.fixture_array(name, shape, dtype)
                for name, (dtype, shape) in fv.MISC_DTYPES.items()}
    strings = stored.pop(fv.MISC_STRINGS_KEY)
    _assert_bit_identical(stored, expected)
    assert strings.dtype == object
    assert list(strings) == fv.MISC_STRINGS


def test_returned_arrays_are_writable_and_independent():
    first = read_tf_checkpoint(PREFIX)["MobilenetV2/Conv/weights"]
    first[...] = 0
    assert read_tf_checkpoint(PREFIX)["MobilenetV2/Conv/weights"].any()


def test_partitioned_variable_is_refused_by_name():
    with pytest.raises(WeightsError, match="partitioned") as info:
        read_tensor_bundle(MISC / "sliced")
    assert info.value.variable == fv.SLICED_KEY


def test_select_variables_handles_orphan_ema_and_strings():
    a = np.zeros(2, np.float32)
    b = np.ones(2, np.float32)
    tensors = {"w/ExponentialMovingAverage": b, "v": a, "x/Adam_1": a,
               "_CHECKPOINTABLE_OBJECT_GRAPH": np.array(b"g", dtype=object)}
    assert select_variables(tensors, ema=True) == {"w": b, "v": a}
    assert select_variables(tensors, ema=False) == {"v": a}


# --- path forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PREFIX, INDEX, DATA, CKPT_DIR, str(PREFIX)],
                         ids=["prefix", "index", "data", "dir-with-state-file", "str"])
def test_path_forms(path):
    _assert_bit_identical(read_tf_checkpoint(path), fv.expected_checkpoint(ema=True))
    assert is_tensor_bundle(path)


def test_directory_with_single_index_and_no_state_file(ckpt_copy: Path):
    _assert_bit_identical(read_tf_checkpoint(ckpt_copy.parent), fv.expected_checkpoint())


def test_state_file_with_stale_absolute_path(ckpt_copy: Path):
    (ckpt_copy.parent / "checkpoint").write_text(
        'model_checkpoint_path: "/gone/elsewhere/model.ckpt"\n'
        'all_model_checkpoint_paths: "/gone/elsewhere/model.ckpt"\n')
    _assert_bit_identical(read_tf_checkpoint(ckpt_copy.parent), fv.expected_checkpoint())


def test_directory_without_checkpoint_is_an_error(tmp_path: Path):
    with pytest.raises(WeightsError, match=str(tmp_path)):
        read_tf_checkpoint(tmp_path)
    assert not is_tensor_bundle(tmp_path)


def test_is_tensor_bundle_is_content_based(tmp_path: Path):
    fake = tmp_path / "fake.ckpt.index"
    fake.write_bytes(b"\0" * 100)
    assert not is_tensor_bundle(fake)
    assert not is_tensor_bundle(tmp_path / "missing.ckpt")
    assert not is_tensor_bundle(FIXTURES / "tf_saved_model_v2_035")
    assert is_tensor_bundle(FIXTURES / "tf_saved_model_v2_035" / "variables")


def test_object_based_bundle_is_resolved_to_variable_names():
    variables = FIXTURES / "tf_saved_model_v2_035" / "variables"
    _assert_bit_identical(read_tf_checkpoint(variables), fv.expected_saved_model())


# --- broken files -----------------------------------------------------------------------------


def test_truncated_data_shard(ckpt_copy: Path):
    data = Path(f"{ckpt_copy}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="beyond the end") as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.path == str(data)
    assert info.value.variable


def test_flipped_byte_in_tensor_names_the_variable(ckpt_copy: Path):
    name = "MobilenetV2/expanded_conv_7/expand/weights/ExponentialMovingAverage"
    entry = _entry(name)
    data = Path(f"{ckpt_copy}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="crc32c") as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.variable == name
    assert info.value.path == str(data)
    assert name in str(info.value)


def test_flipped_byte_in_string_tensor_is_caught(tmp_path: Path):
    for f in MISC.glob("dtypes.*"):
        shutil.copy(f, tmp_path / f.name)
    entry = _entry(fv.MISC_STRINGS_KEY, MISC / "dtypes.index")
    data = tmp_path / f"dtypes.data-{entry.shard_id:05d}-of-00002"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 3] ^= 0x01  # inside the 'xxx...' bytes
    data.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="crc32c") as info:
        read_tensor_bundle(tmp_path / "dtypes")
    assert info.value.variable == fv.MISC_STRINGS_KEY


@pytest.mark.parametrize("keep", [0, 20, 47, 1000, -1])
def test_truncated_index(ckpt_copy: Path, keep: int):
    index = Path(f"{ckpt_copy}.index")
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(WeightsError) as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.path == str(index)


def test_flipped_byte_in_index_block(ckpt_copy: Path):
    index = Path(f"{ckpt_copy}.index")
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0x40
    index.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="crc32c mismatch in table block") as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.path == str(index)


def test_wrong_magic(ckpt_copy: Path):
    index = Path(f"{ckpt_copy}.index")
    raw = bytearray(index.read_bytes())
    raw[-1] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="magic") as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.path == str(index)
    assert not is_tensor_bundle(ckpt_copy)


def test_missing_shard(ckpt_copy: Path):
    data = Path(f"{ckpt_copy}.data-00000-of-00001")
    data.unlink()
    with pytest.raises(WeightsError, match="shard missing") as info:
        read_tf_checkpoint(ckpt_copy)
    assert info.value.path == str(data)


def test_missing_second_shard_of_two(tmp_path: Path):
    for f in MISC.glob("dtypes.*"):
        if not f.name.endswith("00001-of-00002"):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(WeightsError, match="dtypes.data-00001-of-00002"):
        read_tensor_bundle(tmp_path / "dtypes")


def test_missing_index(tmp_path: Path):
    with pytest.raises(WeightsError, match="index not found"):
        read_tf_checkpoint(tmp_path / "nothing.ckpt")


# --- hand-built bundles for cases TF will not write ------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + _varint(payload)
    if wire_type == 5:
        return tag + struct.pack("<I", payload)
    return tag + _varint(len(payload)) + payload


def _bundle_entry(dtype: int, shape: tuple[int, ...], offset: int, data: bytes,
                  shard: int = 0) -> bytes:
    dims = b"".join(_field(2, 2, _field(1, 0, d)) for d in shape)
    return (_field(1, 0, dtype) + _field(2, 2, dims) + _field(3, 0, shard)
            + _field(4, 0, offset) + _field(5, 0, len(data))
            + _field(6, 5, tfc.mask_crc(crc32c(data))))


def _block(entries: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<I", 0) + struct.pack("<I", 1)  # one restart point, at 0
    crc = tfc.mask_crc(crc32c(body + bytes([compression])))
    return body + bytes([compression]) + struct.pack("<I", crc)


def _write_bundle(prefix: Path, entries: list[tuple[bytes, bytes]], data: bytes,
                  compression: int = 0) -> None:
    """A one-block SSTable index plus one data shard, as TF lays them out."""
    header = _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))
    data_block = _block([(b"", header), *entries], compression)
    meta_block = _block([])
    handle = _varint(0) + _varint(len(data_block) - 5)
    index_block = _block([(entries[-1][0] + b"\xff", handle)])
    meta_offset = len(data_block)
    index_offset = meta_offset + len(meta_block)
    footer = (_varint(meta_offset) + _varint(len(meta_block) - 5)
              + _varint(index_offset) + _varint(len(index_block) - 5))
    footer = footer.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(data_block + meta_block + index_block + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)


def test_hand_built_bundle_is_read(tmp_path: Path):
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    _write_bundle(tmp_path / "b", [(b"w", _bundle_entry(1, (2, 3), 0, value.tobytes()))],
                  value.tobytes())
    assert read_tensor_bundle(tmp_path / "b")["w"].tobytes() == value.tobytes()


def test_unknown_dtype_names_the_variable(tmp_path: Path):
    _write_bundle(tmp_path / "b", [(b"v", _bundle_entry(21, (1,), 0, b"abcd"))], b"abcd")
    with pytest.raises(WeightsError, match="unsupported tensor dtype") as info:
        read_tensor_bundle(tmp_path / "b")
    assert info.value.variable == "v"
    assert info.value.path == str(tmp_path / "b.index")


def test_snappy_block_is_refused(tmp_path: Path):
    _write_bundle(tmp_path / "b", [(b"w", _bundle_entry(1, (1,), 0, bytes(4)))], bytes(4),
                  compression=1)
    with pytest.raises(WeightsError, match="Snappy"):
        read_tensor_bundle(tmp_path / "b")


def test_offset_beyond_end_of_shard(tmp_path: Path):
    _write_bundle(tmp_path / "b", [(b"w", _bundle_entry(1, (4,), 64, bytes(16)))], bytes(16))
    with pytest.raises(WeightsError, match="beyond the end") as info:
        read_tensor_bundle(tmp_path / "b")
    assert info.value.variable == "w"


def test_size_not_matching_shape(tmp_path: Path):
    _write_bundle(tmp_path / "b", [(b"w", _bundle_entry(1, (3,), 0, bytes(16)))], bytes(16))
    with pytest.raises(WeightsError, match="expected") as info:
        read_tensor_bundle(tmp_path / "b")
    assert info.value.variable == "w"


def test_shard_id_out_of_range(tmp_path: Path):
    _write_bundle(tmp_path / "b", [(b"w", _bundle_entry(1, (1,), 0, bytes(4), shard=3))],
                  bytes(4))
    with pytest.raises(WeightsError, match="shard 3") as info:
        read_tensor_bundle(tmp_path / "b")
    assert info.value.variable == "w"
