"""The crafted artifacts of issue 18, one test each: every reader refuses them with a
WeightsError naming the file, in bounded time and memory, and never reads outside the
artifact.

Cases that used to exhaust memory run in a forked child with an address-space limit
(fuzz/harness.py ``run_in_child``), so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mobilevec.errors import WeightsError
from mobilevec.formats import keras_h5, tflite
from mobilevec.formats.detect import read_weights
from mobilevec.formats.npy import read_npy_dir
from mobilevec.formats.safetensors_format import read_safetensors, read_safetensors_metadata
from mobilevec.formats.tf_checkpoint import (
    crc32c,
    mask_crc,
    read_tensor_bundle,
    read_tf_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))
import wire  # noqa: E402
from harness import run_in_child  # noqa: E402
from tflite_builder import NET, build_tflite  # noqa: E402

MiB = 1 << 20


def refused_quickly(call, match: str, seconds: float = 2.0) -> WeightsError:
    """``call()`` raises WeightsError matching ``match`` within ``seconds`` of CPU."""
    start = time.process_time()
    with pytest.raises(WeightsError, match=match) as info:
        call()
    assert time.process_time() - start < seconds
    return info.value


def in_child(call, budget: int = 256 * MiB) -> str:
    """How ``call()`` ends in a forked child with ``budget`` bytes of address space."""
    outcome = run_in_child(call, budget)
    return outcome.kind


# --- .h5: reading outside the artifact --------------------------------------------------------

def _keras_file(path: Path, make_dataset) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"Conv1"]
        group = f.create_group("Conv1")
        group.attrs["weight_names"] = [b"Conv1/kernel:0"]
        make_dataset(group, "Conv1/kernel:0")
    return path


def test_h5_external_storage_is_refused_before_reading(tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"PRIVATE KEY " * 36)  # 432 bytes = a (3, 3, 3, 4) float32 kernel
    path = _keras_file(tmp_path / "w.h5", lambda g, n: g.create_dataset(
        n, shape=(3, 3, 3, 4), dtype="<f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)]))
    error = refused_quickly(lambda: keras_h5.read_keras_h5(path), "external storage")
    assert error.path == str(path) and error.variable == "Conv1/kernel:0"
    assert "PRIVATE" not in str(error)


def test_h5_external_storage_on_a_fifo_never_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = _keras_file(tmp_path / "w.h5", lambda g, n: g.create_dataset(
        n, shape=(4,), dtype="<f4", external=[(str(fifo), 0, h5py.h5f.UNLIMITED)]))
    start = time.monotonic()
    with pytest.raises(WeightsError, match="external storage"):
        keras_h5.read_keras_h5(path)
    assert time.monotonic() - start < keras_h5.SANDBOX_WALL_SECONDS


@pytest.mark.parametrize("link", ["external", "soft"])
def test_h5_links_are_refused(tmp_path, link):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("secret", data=np.arange(4, dtype=np.float32))

    def make(group, name):
        group.create_group("Conv1")
        group["Conv1/real"] = np.zeros(4, np.float32)
        group["Conv1"]["kernel:0"] = (h5py.ExternalLink(str(other), "/secret")
                                      if link == "external" else h5py.SoftLink("/Conv1/Conv1/real"))

    path = _keras_file(tmp_path / "w.h5", make)
    refused_quickly(lambda: keras_h5.read_keras_h5(path), f"{link} link")


def test_h5_virtual_dataset_is_refused(tmp_path):
    other = tmp_path / "src.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data", data=np.arange(4, dtype=np.float32))

    def make(group, name):
        layout = h5py.VirtualLayout(shape=(4,), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(4,))
        group.create_virtual_dataset(name, layout)

    path = _keras_file(tmp_path / "w.h5", make)
    refused_quickly(lambda: keras_h5.read_keras_h5(path), "virtual dataset")


@pytest.mark.parametrize("shape", [(1 << 38,), (1 << 29,)], ids=["1 TiB", "2 GiB"])
def test_h5_fill_value_dataset_without_storage_is_refused(tmp_path, shape):
    path = _keras_file(tmp_path / "w.h5", lambda g, n: g.create_dataset(
        n, shape=shape, dtype="<f4", chunks=(1024,), fillvalue=1.0))
    assert path.stat().st_size < 64 * 1024
    refused_quickly(lambda: keras_h5.read_keras_h5(path), "no storage|would take")


def test_h5_partly_allocated_chunks_are_refused(tmp_path):
    def make(group, name):
        ds = group.create_dataset(name, shape=(1 << 20,), dtype="<f4", chunks=(1024,))
        ds[:1024] = 1.0  # one chunk of 1024 written, the rest fill values

    path = _keras_file(tmp_path / "w.h5", make)
    refused_quickly(lambda: keras_h5.read_keras_h5(path), "stores")


def test_h5_corrupt_file_is_a_weights_error(tmp_path):
    good = Path(__file__).parent / "fixtures" / "keras2_mobilenet_v2_035_no_top.h5"
    path = tmp_path / "cut.h5"
    path.write_bytes(good.read_bytes()[:5000])
    refused_quickly(lambda: keras_h5.read_keras_h5(path), "HDF5")


# --- .h5: the sandbox bounds what HDF5 itself does --------------------------------------------

def test_h5_whose_attribute_read_spins_in_hdf5_is_stopped():
    # Found by the fuzzer (fuzz/harness.py, h5 seed "keras2_layers", three edits): reading
    # root.attrs["layer_names"] spins inside HDF5 holding the GIL, as the issue reported.
    path = Path(__file__).parent / "fixtures" / "hostile" / "h5_attribute_read_spins.h5"
    start = time.monotonic()
    with pytest.raises(WeightsError, match="CPU limit|ran longer") as info:
        keras_h5.read_keras_h5(path)
    assert info.value.path == str(path)
    assert time.monotonic() - start < keras_h5.SANDBOX_WALL_SECONDS + 5


def _fake_child(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(keras_h5.__file__).parent)!r})\n"
        "import _h5_child\n"
        "_h5_child._limit(int(sys.argv[2]), float(sys.argv[3]))\n" + body)
    return script


def test_h5_reader_spinning_in_c_is_stopped_by_its_cpu_limit(tmp_path, monkeypatch):
    # Two byte flips made HDF5 spin for > 120 s holding the GIL; any spin in the child
    # ends at the CPU limit and reaches the caller as a WeightsError.
    monkeypatch.setattr(keras_h5, "_CHILD", _fake_child(tmp_path, "while True:\n    pass\n"))
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    start = time.monotonic()
    with pytest.raises(WeightsError, match="CPU limit|ran longer") as info:
        keras_h5.read_keras_h5(path)
    assert info.value.path == str(path)
    assert time.monotonic() - start < keras_h5.SANDBOX_WALL_SECONDS + 5


def test_h5_reader_blocked_is_stopped_by_its_wall_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(keras_h5, "_CHILD", _fake_child(tmp_path, "import time\ntime.sleep(60)\n"))
    monkeypatch.setattr(keras_h5, "SANDBOX_WALL_SECONDS", 1.0)
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(WeightsError, match="ran longer"):
        keras_h5.read_keras_h5(path)


def test_h5_reader_allocating_without_bound_hits_its_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(keras_h5, "_CHILD", _fake_child(
        tmp_path, "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 26))\n"))
    path = tmp_path / "w.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(WeightsError, match="stopped"):
        keras_h5.read_keras_h5(path)


# --- .npy folders --------------------------------------------------------------------------

def _npy_dir(folder: Path, rows: list[str], raw: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "a.npy", np.arange(4, dtype=np.float32))
    text = "file\ttf_slim_variable\n" + "".join(r + "\n" for r in rows)
    (folder / "MANIFEST.tsv").write_bytes(raw if raw is not None else text.encode())
    return folder


@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside.npy", "sub/../../outside.npy"])
def test_npy_manifest_cannot_name_files_outside_its_folder(tmp_path, name):
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full(4, 7.0, np.float32))
    name = str(outside) if name == "ABSOLUTE" else name
    folder = _npy_dir(tmp_path / "w", [f"{name}\tMobilenetV2/x"])
    error = refused_quickly(lambda: read_npy_dir(folder), "not a plain path inside")
    assert error.variable == "MobilenetV2/x"


def test_npy_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full(4, 7.0, np.float32))
    folder = _npy_dir(tmp_path / "w", ["link.npy\tMobilenetV2/x"])
    (folder / "link.npy").symlink_to(outside)
    refused_quickly(lambda: read_npy_dir(folder), "link")


def test_npy_header_declaring_4_tib_is_refused_without_allocating(tmp_path):
    folder = _npy_dir(tmp_path / "w", ["a.npy\tMobilenetV2/x"])
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += b" " * (117 - len(header)) + b"\n"
    (folder / "a.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header
                                   + bytes(16))
    assert in_child(lambda: read_npy_dir(folder)) == "weights_error"
    refused_quickly(lambda: read_npy_dir(folder), "would take|header says")


def test_npz_under_an_npy_name_is_a_weights_error(tmp_path):
    folder = _npy_dir(tmp_path / "w", ["a.npy\tMobilenetV2/x"])
    np.savez(folder / "z.npz", x=np.arange(3))
    (folder / "a.npy").write_bytes((folder / "z.npz").read_bytes())
    refused_quickly(lambda: read_npy_dir(folder), "not a .npy file")


def test_latin1_manifest_is_a_weights_error(tmp_path):
    folder = _npy_dir(tmp_path / "w", [], raw="file\ttf_slim_variable\na.npy\tcaf\xe9\n"
                      .encode("latin-1"))
    refused_quickly(lambda: read_npy_dir(folder), "not UTF-8")


@pytest.mark.parametrize("descr", ["i4,(2", "[('a', '<f4')]", "|O", "<U3", "(2,)<f4", "V8"])
def test_npy_descr_other_than_a_plain_number_is_refused(tmp_path, descr):
    # np.dtype("i4,(2") raises SyntaxError: found by fuzz/atheris_target.py.
    folder = _npy_dir(tmp_path / "w", ["a.npy\tMobilenetV2/x"])
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (1,), }}".encode()
    header += b" " * (117 - len(header)) + b"\n"
    (folder / "a.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header
                                   + bytes(8))
    refused_quickly(lambda: read_npy_dir(folder), "not a plain number type")


def test_pickled_npy_is_refused(tmp_path):
    folder = _npy_dir(tmp_path / "w", ["a.npy\tMobilenetV2/x"])
    np.save(folder / "a.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refused_quickly(lambda: read_npy_dir(folder), "not a plain number type")


# --- TensorBundles ---------------------------------------------------------------------------

def _header(num_shards: int = 1) -> bytes:
    return wire.encode_fields([(1, 0, num_shards), (3, 2, wire.encode_fields([(1, 0, 1)]))])


def _entry(dtype: int, shape, offset: int, data: bytes, size: int | None = None) -> bytes:
    dims = [(2, 2, wire.encode_fields([(1, 0, d)])) for d in shape]
    return wire.encode_fields([(1, 0, dtype), (2, 2, wire.encode_fields(dims)), (4, 0, offset),
                               (5, 0, len(data) if size is None else size),
                               (6, 5, mask_crc(crc32c(data)))])


def _bundle(tmp_path: Path, entries, data: bytes = b"", num_shards: int = 1,
            **table) -> Path:
    prefix = tmp_path / "b"
    index, _ = wire.encode_table([(b"", _header(num_shards)), *entries], **table)
    Path(f"{prefix}.index").write_bytes(index)
    Path(f"{prefix}.data-00000-of-{num_shards:05d}").write_bytes(data)
    return prefix


def test_bundle_with_2_to_the_40_shards_is_refused_at_once(tmp_path):
    prefix = _bundle(tmp_path, [(b"w", _entry(1, (1,), 0, bytes(4)))], bytes(4),
                     num_shards=1 << 40)
    refused_quickly(lambda: read_tensor_bundle(prefix), "data shards", seconds=0.5)


def test_string_entry_of_huge_shape_allocates_nothing(tmp_path):
    prefix = _bundle(tmp_path, [(b"s", _entry(7, (1 << 40,), 0, bytes(8)))], bytes(8))
    assert Path(f"{prefix}.index").stat().st_size < 200
    assert in_child(lambda: read_tensor_bundle(prefix)) == "weights_error"
    refused_quickly(lambda: read_tensor_bundle(prefix), "string tensor of")


def test_shape_whose_element_count_overflows_int64_is_refused(tmp_path):
    prefix = _bundle(tmp_path, [(b"w", _entry(1, (1 << 32, 1 << 32, 1 << 32), 0, bytes(4)))],
                     bytes(4))
    refused_quickly(lambda: read_tensor_bundle(prefix), "would take")


def test_negative_size_and_offset_are_refused(tmp_path):
    prefix = _bundle(tmp_path, [(b"w", _entry(1, (1,), 0, bytes(4), size=-4 & (2**64 - 1)))],
                     bytes(4))
    refused_quickly(lambda: read_tensor_bundle(prefix), "negative")


def test_field_with_an_unexpected_wire_type_is_a_weights_error(tmp_path):
    bad = wire.encode_fields([(1, 2, b"\x01"), (5, 0, 4)])  # dtype as a string
    prefix = _bundle(tmp_path, [(b"w", bad)], bytes(4))
    error = refused_quickly(lambda: read_tensor_bundle(prefix), "expected a number")
    assert error.variable == "w"


def test_keys_growing_by_prefix_compression_are_refused(tmp_path):
    # Each key shares the whole previous key and adds 64 bytes: a 300 kB index whose keys,
    # if built, add up to gigabytes.
    value = _entry(1, (1,), 0, bytes(4))
    body = bytearray(wire.varint(0) + wire.varint(0) + wire.varint(len(_header()))
                     + _header())
    for i in range(4000):
        body += wire.varint(64 * i) + wire.varint(64) + wire.varint(len(value))
        body += bytes([65 + i % 26]) * 64 + value
    body += struct.pack("<I", 0) + struct.pack("<I", 1)
    block = wire.with_trailer(bytes(body))
    index = wire.block_body([(b"\xff", wire.varint(0) + wire.varint(len(body)))], 1)
    meta = wire.block_body([])
    table = block + wire.with_trailer(meta) + wire.with_trailer(index)
    footer = (wire.varint(len(block)) + wire.varint(len(meta))
              + wire.varint(len(block) + len(meta) + 5) + wire.varint(len(index)))
    table += footer.ljust(40, b"\0") + struct.pack("<Q", wire.TABLE_MAGIC)
    prefix = tmp_path / "b"
    Path(f"{prefix}.index").write_bytes(table)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(4))
    assert len(table) < 400_000
    assert in_child(lambda: read_tensor_bundle(prefix)) == "weights_error"
    refused_quickly(lambda: read_tensor_bundle(prefix), "-byte key")


def test_repeated_block_handles_are_refused(tmp_path):
    entries = [(b"w%04d" % i, _entry(1, (1,), 4 * i, bytes(4))) for i in range(200)]
    prefix = _bundle(tmp_path, entries, bytes(800), repeat_index=2000)
    refused_quickly(lambda: read_tensor_bundle(prefix), "overlaps or repeats", seconds=1.0)


def test_keys_out_of_order_are_refused(tmp_path):
    prefix = _bundle(tmp_path, [(b"b", _entry(1, (1,), 0, bytes(4))),
                                (b"a", _entry(1, (1,), 4, bytes(4)))], bytes(8))
    refused_quickly(lambda: read_tensor_bundle(prefix), "out of order")


def test_tensors_sharing_bytes_are_refused(tmp_path):
    # 500 entries over the same 1 MiB would copy 500 MiB.
    data = bytes(MiB)
    value = _entry(1, (MiB // 4,), 0, data)
    entries = [(b"w%04d" % i, value) for i in range(500)]
    prefix = _bundle(tmp_path, entries, data)
    assert in_child(lambda: read_tensor_bundle(prefix)) == "weights_error"
    refused_quickly(lambda: read_tensor_bundle(prefix), "overlap")


def test_checkpoint_state_file_cannot_point_outside_its_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = np.float32([9]).tobytes()
    _bundle(elsewhere, [(b"w", _entry(1, (1,), 0, data))], data)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for named in (elsewhere / "b", "../elsewhere/b"):
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
        with pytest.raises(WeightsError, match="index not found"):
            read_tf_checkpoint(folder)  # looked for ckpt/b only
        with pytest.raises(WeightsError):
            read_weights(folder)


def test_checkpoint_state_file_of_blank_lines_is_read_in_linear_time(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "checkpoint").write_text("\n" * 500_000 + "x")
    refused_quickly(lambda: read_tf_checkpoint(folder), "no model_checkpoint_path")


# --- TFLite ----------------------------------------------------------------------------------

def _tflite_with_name(name: str) -> bytes:
    tensors = [("in", (1, 4, 4, 3), 0, None),
               (name, (2, 1, 1, 3), 0, np.ones((2, 1, 1, 3), np.float32)),
               ("out", (1, 4, 4, 2), 0, None)]
    return build_tflite(tensors, [(3, [0, 1, -1], [2], "conv", 0, 1)], [0], [2])


def test_tflite_scope_search_is_linear_in_the_name_length():
    # "/MobilenetV3/Conv" repeated, then "\n" and one character: 2.6 s at 42 kB and 51 s
    # at 162 kB with the old pattern; linear now.
    name = f"/{NET}/Conv" * 9500 + "\nx"
    start = time.process_time()
    tflite._name_scopes(name)
    assert time.process_time() - start < 0.2


def test_tflite_names_too_long_are_refused(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_tflite_with_name(f"/{NET}/Conv" * 9500 + "\nx"))  # 162 kB
    refused_quickly(lambda: tflite.read_tflite(path), "bytes \\(at most")


def test_tflite_long_name_under_the_cap_reads_quickly(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_tflite_with_name(f"{NET}/Conv/weights" + f";/{NET}/Conv" * 3500 + "\nx"))
    start = time.process_time()
    with contextlib.suppress(WeightsError):
        tflite.read_tflite(path)
    assert time.process_time() - start < 1.0


# --- safetensors -----------------------------------------------------------------------------

def _safetensors(path: Path, header, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_bf16_safetensors_are_widened_exactly(tmp_path):
    values = np.float32([1.5, -2.0, 3.140625])  # representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = _safetensors(tmp_path / "w.safetensors",
                        {"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, raw)
    got = read_safetensors(path)["x"]
    assert got.dtype == np.float32 and got.tolist() == values.tolist()


def test_f8_safetensors_are_a_weights_error(tmp_path):
    path = _safetensors(tmp_path / "w.safetensors",
                        {"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
                        bytes(2))
    error = refused_quickly(lambda: read_safetensors(path), "unsupported dtype")
    assert error.variable == "x"


@pytest.mark.parametrize("header", [[1, 2], "text", None, 3])
def test_safetensors_header_that_is_not_an_object(tmp_path, header):
    path = _safetensors(tmp_path / "w.safetensors", header)
    refused_quickly(lambda: read_safetensors(path), "not an object|header length")
    refused_quickly(lambda: read_safetensors_metadata(path), "not an object|header length")


def test_safetensors_offsets_beyond_the_data_are_refused(tmp_path):
    path = _safetensors(tmp_path / "w.safetensors",
                        {"x": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}},
                        bytes(16))
    refused_quickly(lambda: read_safetensors(path), "would take|do not fit")


# --- the backstop ----------------------------------------------------------------------------

def test_read_weights_reports_a_reader_slip_as_weights_error(tmp_path, monkeypatch):
    from mobilevec.formats import safetensors_format

    path = _safetensors(tmp_path / "w.safetensors",
                        {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4))

    def slip(p):
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(safetensors_format, "read_safetensors", slip)
    with pytest.raises(WeightsError, match="struct.error|unpack requires") as info:
        read_weights(path)
    assert info.value.path == str(path)


def test_fifos_in_place_of_artifact_files_never_block(tmp_path):
    data = np.float32([1]).tobytes()
    prefix = _bundle(tmp_path, [(b"w", _entry(1, (1,), 0, data))], data)
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.unlink()
    os.mkfifo(shard)
    refused_quickly(lambda: read_tensor_bundle(prefix), "not a regular file")
    for name, read in (("w.safetensors", read_safetensors), ("w.h5", keras_h5.read_keras_h5),
                       ("m.tflite", tflite.read_tflite)):
        os.mkfifo(tmp_path / name)
        refused_quickly(lambda r=read, n=name: r(tmp_path / n), "regular file")
