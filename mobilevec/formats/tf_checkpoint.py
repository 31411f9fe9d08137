"""Reader of TensorFlow TensorBundle checkpoints (``PREFIX.index`` + ``PREFIX.data-*``), no TF.

A TensorBundle is what ``tf.compat.v1.train.Saver`` (format V2), ``tf.train.Checkpoint`` and
``tf.saved_model.save`` (``variables/variables``) write:

``PREFIX.index``
    A LevelDB-style SSTable mapping keys to serialized protos. The empty key holds a
    ``BundleHeaderProto`` (number of shards, endianness, version); every other key is a
    tensor name whose value is a ``BundleEntryProto`` (dtype, shape, shard, offset, size,
    masked crc32c, slices).
``PREFIX.data-0000i-of-0000N``
    Raw tensor bytes, little-endian, C order; strings as varint lengths, a masked crc32c of
    those lengths, then the bytes.

Every table block and every tensor is verified against its crc32c. Any inconsistency raises
:class:`~mobilevec.errors.WeightsError` naming the file and, where one is at fault, the
variable; a dict is only returned once every tensor has been read and checked.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilevec.errors import WeightsError
from mobilevec.formats import _limits
from mobilevec.formats import _protobuf as pb
from mobilevec.formats.object_graph import OBJECT_GRAPH_KEY, resolve_object_graph

__all__ = [
    "DROPPED_NAMES",
    "DROPPED_SUFFIXES",
    "EMA_SUFFIX",
    "crc32c",
    "is_tensor_bundle",
    "read_tensor_bundle",
    "read_tf_checkpoint",
    "select_variables",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

EMA_SUFFIX = "/ExponentialMovingAverage"
# Training state that is not part of the model, dropped by read_tf_checkpoint:
# whole names, and last path components of optimizer slot variables (``X/Momentum`` ...).
DROPPED_NAMES = frozenset({"global_step", "save_counter", "beta1_power", "beta2_power"})
DROPPED_SUFFIXES = frozenset({
    "Momentum", "RMSProp", "RMSProp_1", "Adam", "Adam_1", "Adagrad", "AdagradDA",
    "Adadelta", "Adadelta_1", "Ftrl", "Ftrl_1", "LARS",
})

# --- crc32c (Castagnoli), as TF's tsl::crc32c ------------------------------------------

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_CRC_MASK_DELTA = 0xA282EAD8
_NUMPY_MIN_BYTES = 8192  # below this the per-call numpy overhead loses to plain Python
_MAX_PARALLEL_CHUNKS = 4096


@functools.cache
def _byte_table() -> tuple[int, ...]:
    """``table[b]``: the register after shifting byte ``b`` through 8 steps of the LFSR."""
    table = []
    for byte in range(256):
        reg = byte
        for _ in range(8):
            reg = (reg >> 1) ^ (_CRC32C_POLY if reg & 1 else 0)
        table.append(reg)
    return tuple(table)


def _update_python(reg: int, data: bytes | memoryview) -> int:
    table = _byte_table()
    for byte in data:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


@functools.cache
def _zero_shift_operator(log2_bytes: int) -> tuple[np.ndarray, ...]:
    """The linear map "advance the register over 2**log2_bytes zero bytes", as 4 byte tables.

    A CRC register update is linear over GF(2), so the map is fixed by its values on the
    bytes of the register: ``op(r) = t0[r & 255] ^ t1[(r >> 8) & 255] ^ t2[...] ^ t3[r >> 24]``.
    One zero byte is the plain table step; doubling is composing the map with itself.
    """
    if log2_bytes == 0:
        table = np.array(_byte_table(), dtype=np.uint32)
        values = np.arange(256, dtype=np.uint32)
        return tuple(table[(values << (8 * k)) & 0xFF] ^ ((values << (8 * k)) >> 8)
                     for k in range(4))
    half = _zero_shift_operator(log2_bytes - 1)
    return tuple(_apply_operator(half, t) for t in half)


def _apply_operator(op: tuple[np.ndarray, ...], regs: np.ndarray) -> np.ndarray:
    return (op[0][regs & 0xFF] ^ op[1][(regs >> 8) & 0xFF]
            ^ op[2][(regs >> 16) & 0xFF] ^ op[3][regs >> 24])


def _update_numpy(reg: int, data: bytes | memoryview) -> int:
    """Same result as :func:`_update_python`, vectorised across chunks.

    The data is cut into ``n`` chunks of ``2**k`` bytes whose registers (started from 0)
    are advanced side by side, one byte column per numpy step; the chunk registers are then
    folded left to right with ``reg = shift(reg) ^ chunk_reg``, valid because the register
    update is linear. The tail shorter than a chunk goes through the Python loop.
    """
    size = len(data)
    log2_chunk = max(6, (size.bit_length() + 1) // 2)  # chunk length ~ sqrt(size)
    while size >> log2_chunk > _MAX_PARALLEL_CHUNKS:
        log2_chunk += 1
    chunk = 1 << log2_chunk
    count = size // chunk
    columns = np.ascontiguousarray(
        np.frombuffer(data, dtype=np.uint8, count=count * chunk).reshape(count, chunk).T)
    table = np.array(_byte_table(), dtype=np.uint32)
    regs = np.zeros(count, dtype=np.uint32)
    index = np.empty(count, dtype=np.uint32)
    for column in columns:
        np.bitwise_and(regs, 0xFF, out=index)
        index ^= column
        regs >>= 8
        regs ^= table[index]
    shift = [t.tolist() for t in _zero_shift_operator(log2_chunk)]
    t0, t1, t2, t3 = shift
    for chunk_reg in regs.tolist():
        reg = (t0[reg & 0xFF] ^ t1[(reg >> 8) & 0xFF] ^ t2[(reg >> 16) & 0xFF]
               ^ t3[reg >> 24] ^ chunk_reg)
    return _update_python(reg, memoryview(data)[count * chunk:])


def _crc32c_portable(data: bytes | memoryview, crc: int = 0) -> int:
    update = _update_python if len(data) < _NUMPY_MIN_BYTES else _update_numpy
    return update(crc ^ 0xFFFFFFFF, data) ^ 0xFFFFFFFF


@functools.cache
def _crc32c_backend() -> Callable[[bytes | memoryview, int], int]:
    """A compiled crc32c if one is installed and gives the right answer, else ours."""
    candidates: list[Callable[[bytes | memoryview, int], int]] = []
    try:
        import google_crc32c

        candidates.append(lambda data, crc: google_crc32c.extend(crc, bytes(data)))
    except ImportError:
        pass
    try:
        import crc32c as crc32c_pkg

        candidates.append(lambda data, crc: crc32c_pkg.crc32c(bytes(data), crc))
    except (ImportError, AttributeError):
        pass
    for candidate in candidates:
        try:
            if candidate(b"123456789", 0) == 0xE3069283 and candidate(b"789", candidate(
                    b"123456", 0)) == 0xE3069283:
                return candidate
        except Exception:  # a broken or differently-shaped binding: fall back quietly
            logger.debug("crc32c binding %r unusable", candidate, exc_info=True)
    return _crc32c_portable


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc`` (a finished CRC, as TF's
    ``crc32c::Extend``): ``crc32c(b + c) == crc32c(c, crc32c(b))``. Returns an unsigned int.

    Uses ``google_crc32c`` or ``crc32c`` when importable, else a numpy implementation.
    """
    return _crc32c_backend()(data, crc)


def mask_crc(crc: int) -> int:
    """TF/LevelDB masked crc: rotate right by 15 and add a constant (stored form)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of :func:`mask_crc`."""
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- SSTable (LevelDB table, as tsl/lib/io/table) ----------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles (varints, padded to 40 bytes) + 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c of block and type byte
_NO_COMPRESSION, _SNAPPY = 0, 1


def _has_table_magic(data: bytes) -> bool:
    return (len(data) >= _FOOTER_SIZE
            and int.from_bytes(data[-8:], "little") == _TABLE_MAGIC)


def _read_table(index_path: Path) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of an SSTable file, in key order."""
    try:
        data = index_path.read_bytes()
    except OSError as exc:
        raise WeightsError(index_path, f"cannot read checkpoint index: {exc}") from exc
    if len(data) < _FOOTER_SIZE:
        raise WeightsError(index_path, f"index is {len(data)} bytes, shorter than the "
                           f"{_FOOTER_SIZE}-byte table footer (truncated?)")
    if not _has_table_magic(data):
        raise WeightsError(index_path, "not a TensorBundle index: bad table magic number "
                           "(truncated, or not a TF checkpoint .index file)")
    footer = memoryview(data)[-_FOOTER_SIZE:]
    try:
        _metaindex, pos = _block_handle(footer, 0)
        index_handle, _ = _block_handle(footer, pos)
    except pb.ProtobufError as exc:
        raise WeightsError(index_path, f"corrupt table footer: {exc}") from None
    entries: list[tuple[bytes, bytes]] = []
    block_end = 0
    for _last_key, handle in _block_entries(index_path, _read_block(index_path, data,
                                                                    index_handle)):
        try:
            data_handle, _ = _block_handle(memoryview(handle), 0)
        except pb.ProtobufError as exc:
            raise WeightsError(index_path, f"corrupt table index block: {exc}") from None
        # TF writes data blocks one after the other; a handle that points back (a repeat
        # or an overlap) would make a small index decode the same bytes many times over.
        if data_handle[0] < block_end:
            raise WeightsError(index_path, f"table block at {data_handle[0]} overlaps or "
                               "repeats an earlier one (corrupt index)")
        block_end = data_handle[0] + data_handle[1] + _BLOCK_TRAILER_SIZE
        for key, value in _block_entries(index_path, _read_block(index_path, data,
                                                                 data_handle)):
            if entries and key <= entries[-1][0]:
                raise WeightsError(index_path, f"table keys out of order ({key[:80]!r} after "
                                   f"{entries[-1][0][:80]!r}; corrupt index)")
            entries.append((key, value))
            _limits.check_count(index_path, len(entries), "table entries",
                                _limits.MAX_TENSORS + 1)
    return entries


def _block_handle(buf: memoryview, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = pb.read_varint(buf, pos)
    size, pos = pb.read_varint(buf, pos)
    return (offset, size), pos


def _read_block(path: Path, data: bytes, handle: tuple[int, int]) -> memoryview:
    """The contents of one table block, after checking its trailer crc and compression."""
    offset, size = handle
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(data) - _FOOTER_SIZE:
        raise WeightsError(path, f"table block at {offset}+{size} runs past the end of the "
                           "index (truncated?)")
    view = memoryview(data)
    compression = data[offset + size]
    stored = int.from_bytes(view[offset + size + 1:end], "little")
    if crc32c(view[offset:offset + size + 1]) != unmask_crc(stored):
        raise WeightsError(path, f"crc32c mismatch in table block at offset {offset} "
                           "(corrupt index file)")
    if compression == _SNAPPY:
        raise WeightsError(path, "Snappy-compressed table blocks are not supported (TF "
                           "writes checkpoint indexes uncompressed; re-save the checkpoint)")
    if compression != _NO_COMPRESSION:
        raise WeightsError(path, f"unknown table block compression type {compression}")
    return view[offset:offset + size]


def _block_entries(path: Path, block: memoryview) -> Iterator[tuple[bytes, bytes]]:
    """Decode one block: prefix-compressed entries, then restart offsets and their count."""
    if len(block) < 4:
        raise WeightsError(path, "table block shorter than its restart count")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise WeightsError(path, f"table block claims {num_restarts} restart points, more "
                           "than fit in it (corrupt index)")
    key = b""
    pos = 0
    try:
        while pos < limit:
            shared, pos = pb.read_varint(block, pos)
            unshared, pos = pb.read_varint(block, pos)
            value_size, pos = pb.read_varint(block, pos)
            if shared > len(key) or pos + unshared + value_size > limit:
                raise pb.ProtobufError("entry runs past the block")
            if shared + unshared > _limits.MAX_NAME_BYTES:
                raise pb.ProtobufError(f"a {shared + unshared}-byte key (at most "
                                       f"{_limits.MAX_NAME_BYTES})")
            key = key[:shared] + bytes(block[pos:pos + unshared])
            pos += unshared
            yield key, bytes(block[pos:pos + value_size])
            pos += value_size
    except pb.ProtobufError as exc:
        raise WeightsError(path, f"corrupt table block entry: {exc}") from None


# --- TensorBundle entries -----------------------------------------------------------------

_DT_STRING = 7
_DT_BFLOAT16 = 14
# TF DataType enum -> numpy dtype (little-endian; byte-swapped for big-endian bundles).
_NUMPY_DTYPES = {
    1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
    8: np.complex64, 9: np.int64, 10: np.bool_, 17: np.uint16, 18: np.complex128,
    19: np.float16, 22: np.uint32, 23: np.uint64,
}
_DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}
_BIG_ENDIAN = 1
_SUPPORTED_BUNDLE_VERSION = 1


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc: int  # masked, as stored
    sliced: bool


@dataclass(frozen=True)
class _Header:
    num_shards: int
    big_endian: bool


def _decode_key(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:  # slice keys of partitioned variables are binary
        return repr(key)


def _parse_header(path: Path, value: bytes) -> _Header:
    fields = pb.parse_message(value)
    num_shards = pb.get_int64(fields, 1)
    endianness = pb.get_int(fields, 2)
    version = pb.as_message(pb.last(fields, 3))
    min_consumer = pb.get_int64(version, 2)
    bad = pb.repeated_varints(version.get(3, []))
    if min_consumer > _SUPPORTED_BUNDLE_VERSION or _SUPPORTED_BUNDLE_VERSION in bad:
        raise WeightsError(path, f"bundle needs a newer reader (min_consumer={min_consumer})")
    if not 1 <= num_shards <= _limits.MAX_SHARDS:
        raise WeightsError(path, f"bundle header says {num_shards} data shards (1 to "
                           f"{_limits.MAX_SHARDS} supported)")
    return _Header(num_shards=num_shards, big_endian=endianness == _BIG_ENDIAN)


def _parse_entry(path: Path, name: str, value: bytes) -> _Entry:
    try:
        fields = pb.parse_message(value)
        shape_msg = pb.as_message(pb.last(fields, 2))
        if pb.get_int(shape_msg, 3):
            raise pb.ProtobufError("tensor of unknown rank")
        dim_messages = shape_msg.get(2, [])
        if len(dim_messages) > _limits.MAX_RANK:
            raise pb.ProtobufError(f"shape of rank {len(dim_messages)} (at most "
                                   f"{_limits.MAX_RANK})")
        dims = tuple(pb.get_int64(pb.as_message(d), 1) for d in dim_messages)
        if any(d < 0 for d in dims):
            raise pb.ProtobufError(f"negative dimension in shape {dims}")
        entry = _Entry(
            name=name,
            dtype=pb.get_int(fields, 1),
            shape=dims,
            shard_id=pb.get_int64(fields, 3),
            offset=pb.get_int64(fields, 4),
            size=pb.get_int64(fields, 5),
            crc=pb.get_int(fields, 6) & 0xFFFFFFFF,
            sliced=bool(fields.get(7)),
        )
        if entry.offset < 0 or entry.size < 0:
            raise pb.ProtobufError(f"negative offset {entry.offset} or size {entry.size}")
        return entry
    except pb.ProtobufError as exc:
        raise WeightsError(path, f"corrupt BundleEntryProto: {exc}", variable=name) from None


def _read_index(index_path: Path) -> tuple[_Header, list[_Entry]]:
    table = _read_table(index_path)
    if not table or table[0][0] != b"":
        raise WeightsError(index_path, "TensorBundle index has no header entry")
    try:
        header = _parse_header(index_path, table[0][1])
    except pb.ProtobufError as exc:
        raise WeightsError(index_path, f"corrupt BundleHeaderProto: {exc}") from None
    entries = [_parse_entry(index_path, _decode_key(k), v) for k, v in table[1:]]
    return header, entries


# --- tensor data ------------------------------------------------------------------------------


def _data_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def _read_bytes(shard_path: Path, handle, entry: _Entry) -> bytearray:
    shard_size = os.fstat(handle.fileno()).st_size
    if entry.offset < 0 or entry.offset + entry.size > shard_size:
        raise WeightsError(shard_path, f"tensor bytes [{entry.offset}, "
                           f"{entry.offset + entry.size}) lie beyond the end of the "
                           f"{shard_size}-byte data file (truncated?)", variable=entry.name)
    handle.seek(entry.offset)
    buf = bytearray(entry.size)
    if handle.readinto(buf) != entry.size:
        raise WeightsError(shard_path, "short read of tensor bytes", variable=entry.name)
    return buf


def _numeric_tensor(shard_path: Path, entry: _Entry, buf: bytearray,
                    big_endian: bool) -> np.ndarray:
    if entry.dtype == _DT_BFLOAT16:
        # numpy has no bfloat16: widen losslessly to float32 (bfloat16 is its top half).
        dtype: np.dtype = np.dtype(np.uint16)
    else:
        dtype = np.dtype(_NUMPY_DTYPES[entry.dtype])
    count = _limits.element_count(shard_path, entry.shape, entry.name)
    if count * dtype.itemsize != entry.size:
        raise WeightsError(shard_path, f"{entry.size} bytes stored for shape {entry.shape} of "
                           f"{dtype} ({count * dtype.itemsize} expected)", variable=entry.name)
    if big_endian:
        dtype = dtype.newbyteorder(">")
    array = np.frombuffer(buf, dtype=dtype).reshape(entry.shape)
    if big_endian:
        array = array.astype(dtype.newbyteorder("="))
    if entry.dtype == _DT_BFLOAT16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _string_tensor(shard_path: Path, entry: _Entry, buf: bytearray,
                   big_endian: bool) -> np.ndarray:
    """Strings: varint64 lengths, masked crc32c of the lengths, then the bytes.

    TF checksums each length as a fixed-width uint32 (uint64 above 4 GiB) in the writer's
    byte order, not as the varint bytes; the whole-tensor crc then continues over the four
    stored length-checksum bytes and the string bytes.
    """
    count = _limits.element_count(shard_path, entry.shape, entry.name)
    # Each string takes at least a 1-byte length: check before allocating ``count`` objects.
    if count > entry.size or count > _limits.MAX_TENSORS:
        raise WeightsError(shard_path, f"string tensor of {count} elements stored in "
                           f"{entry.size} bytes", variable=entry.name)
    out = np.empty(count, dtype=object)
    if entry.size == 0 and count == 0:
        return out.reshape(entry.shape)
    order = ">" if big_endian else "<"
    view = memoryview(buf)
    lengths, pos, crc = [], 0, 0
    try:
        for _ in range(count):
            length, pos = pb.read_varint(view, pos)
            fixed = struct.pack(order + ("I" if length <= 0xFFFFFFFF else "Q"), length)
            crc = crc32c(fixed, crc)
            lengths.append(length)
    except pb.ProtobufError as exc:
        raise WeightsError(shard_path, f"corrupt string lengths: {exc}",
                           variable=entry.name) from None
    if pos + 4 + sum(lengths) != entry.size:
        raise WeightsError(shard_path, "string tensor lengths do not add up to its stored "
                           f"size {entry.size}", variable=entry.name)
    raw_checksum = bytes(view[pos:pos + 4])
    if unmask_crc(int.from_bytes(raw_checksum, "big" if big_endian else "little")) != crc:
        raise WeightsError(shard_path, "crc32c mismatch in string lengths (corrupt data)",
                           variable=entry.name)
    crc = crc32c(raw_checksum, crc)
    pos += 4
    for i, length in enumerate(lengths):
        out[i] = bytes(view[pos:pos + length])
        crc = crc32c(view[pos:pos + length], crc)
        pos += length
    if crc != unmask_crc(entry.crc):
        raise WeightsError(shard_path, "crc32c mismatch (corrupt data)", variable=entry.name)
    return out.reshape(entry.shape)


def _read_tensor(shard_path: Path, handle, entry: _Entry, big_endian: bool) -> np.ndarray:
    buf = _read_bytes(shard_path, handle, entry)
    if entry.dtype == _DT_STRING:
        return _string_tensor(shard_path, entry, buf, big_endian)
    if crc32c(buf) != unmask_crc(entry.crc):
        raise WeightsError(shard_path, "crc32c mismatch: the tensor bytes are corrupt",
                           variable=entry.name)
    return _numeric_tensor(shard_path, entry, buf, big_endian)


def _check_entry(index_path: Path, header: _Header, entry: _Entry) -> None:
    if entry.sliced:
        raise WeightsError(index_path, "partitioned (sliced) variables are not supported; "
                           "re-save the checkpoint with the variable unpartitioned",
                           variable=entry.name)
    if entry.dtype not in _NUMPY_DTYPES and entry.dtype not in (_DT_STRING, _DT_BFLOAT16):
        kind = _DTYPE_NAMES.get(entry.dtype, f"enum value {entry.dtype}")
        raise WeightsError(index_path, f"unsupported tensor dtype ({kind})",
                           variable=entry.name)
    if not 0 <= entry.shard_id < header.num_shards:
        raise WeightsError(index_path, f"tensor in shard {entry.shard_id} but the bundle has "
                           f"{header.num_shards} shards", variable=entry.name)
    if entry.dtype == _DT_STRING:
        return
    itemsize = 2 if entry.dtype == _DT_BFLOAT16 else np.dtype(_NUMPY_DTYPES[entry.dtype]).itemsize
    expected = _limits.tensor_bytes(index_path, entry.shape, itemsize, entry.name)
    if expected != entry.size:
        raise WeightsError(index_path, f"{entry.size} bytes stored for shape "
                           f"{list(entry.shape)} ({expected} expected)", variable=entry.name)


def _check_disjoint(shard_path: Path, entries: list[_Entry]) -> None:
    """Tensors of one shard (sorted by offset) must not share bytes: TF never writes that,
    and a small index could otherwise make every entry copy the whole shard."""
    end, previous = 0, None
    for entry in entries:
        if entry.size == 0:
            continue
        if entry.offset < end:
            raise WeightsError(shard_path, f"tensor bytes at {entry.offset} overlap those of "
                               f"{previous!r} (corrupt index)", variable=entry.name)
        end, previous = entry.offset + entry.size, entry.name


# --- paths ------------------------------------------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
_STATE_LINE = re.compile(r'^[ \t]*model_checkpoint_path[ \t]*:[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*$',
                         re.M)
_MAX_STATE_FILE = 1 << 20  # a CheckpointState lists a few paths


def _prefix_from_state_file(directory: Path) -> Path:
    """The latest checkpoint named by a ``checkpoint`` text file (CheckpointState proto)."""
    state = directory / "checkpoint"
    try:
        with state.open("rb") as f:
            text = f.read(_MAX_STATE_FILE + 1)
    except OSError as exc:
        raise WeightsError(state, f"cannot read the checkpoint state file: {exc}") from exc
    if len(text) > _MAX_STATE_FILE:
        raise WeightsError(state, f"checkpoint state file larger than {_MAX_STATE_FILE} bytes")
    match = _STATE_LINE.search(text.decode("utf-8", errors="replace"))
    if not match:
        raise WeightsError(state, "no model_checkpoint_path in the checkpoint state file")
    text_path = re.sub(r"\\(.)", r"\1", match.group(1))
    if "\x00" in text_path:
        raise WeightsError(state, "model_checkpoint_path holds a NUL byte")
    named = Path(text_path)
    candidate = named if named.is_absolute() else directory / named
    # The state file may name the prefix only inside its own folder: an artifact never
    # points the reader at other files on the machine. Absolute paths also go stale when
    # a checkpoint directory is moved or unpacked elsewhere; the name alone then fits.
    if not _inside(candidate, directory) or not Path(f"{candidate}.index").is_file():
        if named.name in ("", ".", ".."):
            raise WeightsError(state, f"model_checkpoint_path {str(named)!r} names no "
                               "checkpoint in this folder")
        candidate = directory / named.name
    return candidate


def _inside(path: Path, directory: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.join(os.path.realpath(directory), ""))


def _resolve_prefix(path: PathLike) -> Path:
    """Map any accepted spelling of a bundle to its prefix (``.../model.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        if (p / "checkpoint").is_file():
            return _prefix_from_state_file(p)
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        what = "no" if not indexes else f"{len(indexes)}"
        raise WeightsError(p, f"directory has no 'checkpoint' file and {what} *.index files; "
                           "pass the checkpoint prefix (path/model.ckpt) instead")
    if p.name.endswith(".index"):
        return p.with_suffix("")
    if _DATA_SUFFIX.search(p.name):
        return p.with_name(_DATA_SUFFIX.sub("", p.name))
    return p


# --- EMA and training state ---------------------------------------------------------------


def _is_training_state(name: str) -> bool:
    return name in DROPPED_NAMES or name.rsplit("/", 1)[-1] in DROPPED_SUFFIXES


def select_variables(tensors: dict[str, np.ndarray], *, ema: bool = True) -> dict[str, np.ndarray]:
    """Keep the model variables of a name-keyed bundle; substitute EMA values if asked.

    ``X/ExponentialMovingAverage`` keys never appear in the result: with ``ema=True`` their
    value is returned under ``X`` (also when ``X`` itself is absent), with ``ema=False`` the
    raw ``X`` is returned and the averages are ignored. Dropped as training state: the names
    in :data:`DROPPED_NAMES`, any name whose last component is in :data:`DROPPED_SUFFIXES`
    (optimizer slots such as ``X/Momentum``, ``X/RMSProp_1``, ``X/Adam``), and non-numeric
    tensors (``_CHECKPOINTABLE_OBJECT_GRAPH`` and other strings).
    """
    out: dict[str, np.ndarray] = {}
    averaged = []
    for name, value in tensors.items():
        if value.dtype == object:
            continue
        if name.endswith(EMA_SUFFIX):
            averaged.append(name)
        elif not _is_training_state(name):
            out[name] = value
    if ema:
        for name in averaged:
            base = name[: -len(EMA_SUFFIX)]
            if not _is_training_state(base) and not base.endswith(EMA_SUFFIX):
                out[base] = tensors[name]
    dropped = len(tensors) - len(out) - (len(averaged) if ema else 0)
    logger.debug("kept %d variables (%s), dropped %d other entries", len(out),
                 "EMA values" if ema and averaged else "raw values", dropped)
    return out


# --- public API -----------------------------------------------------------------------------


def read_tensor_bundle(prefix: PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a TensorBundle, keyed exactly as stored (no renaming, no filtering).

    ``prefix`` is the bundle prefix (``dir/model.ckpt``); the path forms accepted by
    :func:`read_tf_checkpoint` work too. Numeric tensors come back in their stored dtype
    (float32, float16, float64, int8..int64, uint8..uint64, bool, complex; bfloat16 widened
    to float32), C order, native byte order. String tensors come back as object arrays of
    ``bytes``. Raises :class:`WeightsError` on any truncation, corruption or crc mismatch,
    missing shard, unsupported dtype, or partitioned variable.
    """
    return _read_bundle_at(_resolve_prefix(prefix))


def _read_bundle_at(prefix: Path) -> dict[str, np.ndarray]:
    """read_tensor_bundle for an already resolved prefix."""
    index_path = Path(f"{prefix}.index")
    if not index_path.is_file():
        raise WeightsError(index_path, "checkpoint index not found (expected PREFIX.index "
                           "beside PREFIX.data-*-of-*)")
    header, entries = _read_index(index_path)
    for entry in entries:
        _check_entry(index_path, header, entry)
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted({e.shard_id for e in entries}):
        shard_path = _data_path(prefix, shard, header.num_shards)
        wanted = sorted((e for e in entries if e.shard_id == shard), key=lambda e: e.offset)
        _check_disjoint(shard_path, wanted)
        if not shard_path.is_file():  # also keeps a FIFO of that name from blocking
            raise WeightsError(shard_path, "data shard missing or not a regular file",
                               variable=wanted[0].name)
        try:
            handle = open(shard_path, "rb")  # noqa: SIM115  (closed below, one per shard)
        except OSError as exc:
            raise WeightsError(shard_path, f"data shard missing or unreadable: {exc}",
                               variable=wanted[0].name) from exc
        with handle:
            for entry in wanted:
                tensors[entry.name] = _read_tensor(shard_path, handle, entry, header.big_endian)
    logger.debug("read %d tensors from %s (%d shards)", len(tensors), prefix, header.num_shards)
    return {e.name: tensors[e.name] for e in entries}


def read_tf_checkpoint(path: PathLike, *, ema: bool = True) -> dict[str, np.ndarray]:
    """The model variables of a TF checkpoint, keyed by TF variable name (no ``:0``).

    ``path`` may be the checkpoint prefix (``dir/model.ckpt``), its ``.index`` file, one of
    its ``.data-0000i-of-0000N`` files, or a directory holding a ``checkpoint`` state file
    (the latest checkpoint is read) or exactly one ``*.index``.

    Name-based (TF1 ``Saver``) checkpoints are keyed by variable name already; object-based
    (TF2 ``tf.train.Checkpoint``) ones are resolved to variable names through their object
    graph. With ``ema=True`` (the default, as TF-Slim evaluates) every variable that has an
    ``/ExponentialMovingAverage`` twin gets the twin's value; ``ema=False`` gives the raw
    training values. Optimizer slots, ``global_step`` and friends are dropped, see
    :func:`select_variables`. Arrays keep their stored dtype (float32 for TF-Slim models).

    Raises :class:`WeightsError` naming the file (and variable) on any problem; nothing is
    returned half-read.
    """
    prefix = _resolve_prefix(path)
    tensors = _read_bundle_at(prefix)
    if OBJECT_GRAPH_KEY in tensors:
        tensors = resolve_object_graph(tensors, Path(f"{prefix}.index"))
    variables = select_variables(tensors, ema=ema)
    logger.info("read %d variables from TF checkpoint %s", len(variables), prefix)
    return variables


def is_tensor_bundle(path: PathLike) -> bool:
    """Whether ``path`` (any form :func:`read_tf_checkpoint` accepts) names a TensorBundle.

    Decided by content: the ``.index`` file must end in the SSTable magic number. Never
    raises; a SavedModel directory is not a bundle (its bundle is ``variables/variables``).
    """
    try:
        index_path = Path(f"{_resolve_prefix(path)}.index")
        with open(index_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < _FOOTER_SIZE:
                return False
            handle.seek(-8, os.SEEK_END)
            return int.from_bytes(handle.read(8), "little") == _TABLE_MAGIC
    except (OSError, WeightsError):
        return False
