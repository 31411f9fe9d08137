"""Writers of the wire formats the fuzzer re-encodes, so that mutants get past checksums.

A mutation of a TensorBundle is useless if the block crc32c rejects it at once, so the
fuzzer mutates the decoded table (keys, values, nested protobuf fields, tensor bytes) and
writes it back with every crc recomputed: ``encode_table`` is a LevelDB/TSL table writer
(prefix-compressed keys, restart points, several data blocks, masked crc32c trailers),
``encode_fields`` a protobuf wire writer, ``string_tensor`` TF's string-tensor layout.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from mobilevec.formats import _protobuf as pb
from mobilevec.formats.tf_checkpoint import crc32c, mask_crc

TABLE_MAGIC = 0xDB4775248B80FB57

Field = tuple[int, int, int | bytes]  # (number, wire type, int or raw bytes)


def varint(value: int) -> bytes:
    value &= (1 << 70) - 1  # negative numbers: 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_fields(buf: bytes) -> list[Field]:
    return [(n, wt, v if isinstance(v, int) else bytes(v)) for n, wt, v in pb.iter_fields(buf)]


def encode_fields(fields: Iterable[Field]) -> bytes:
    out = bytearray()
    for number, wire_type, value in fields:
        out += varint(number << 3 | wire_type)
        if wire_type == pb.VARINT:
            out += varint(value if isinstance(value, int) else len(value))
        elif wire_type == pb.FIXED64:
            out += struct.pack("<Q", (value if isinstance(value, int) else 0) & (2**64 - 1))
        elif wire_type == pb.FIXED32:
            out += struct.pack("<I", (value if isinstance(value, int) else 0) & (2**32 - 1))
        else:
            payload = value if isinstance(value, bytes) else varint(value)
            out += varint(len(payload)) + payload
    return bytes(out)


def block_body(entries: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    body, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(body))
            shared = 0
        else:
            shared = 0
            while shared < min(len(last), len(key)) and last[shared] == key[shared]:
                shared += 1
        body += varint(shared) + varint(len(key) - shared) + varint(len(value))
        body += key[shared:] + value
        last = key
    restarts = restarts or [0]
    body += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(body)


def with_trailer(body: bytes, compression: int = 0) -> bytes:
    crc = mask_crc(crc32c(body + bytes([compression])))
    return body + bytes([compression]) + struct.pack("<I", crc)


def encode_table(entries: list[tuple[bytes, bytes]], per_block: int = 24,
                 repeat_index: int = 0,
                 restart_interval: int = 16) -> tuple[bytes, list[tuple[int, int]]]:
    """An SSTable of ``entries`` (as given, in their order) and the (offset, size) of every
    block body in it (data blocks, meta block, index block). ``repeat_index`` > 0 lists
    the first data block that many extra times in the index (repeated handles)."""
    out = bytearray()
    blocks: list[tuple[int, int]] = []
    index_entries: list[tuple[bytes, bytes]] = []
    chunks = [entries[i:i + per_block] for i in range(0, len(entries), per_block)] or [[]]
    for chunk in chunks:
        body = block_body(chunk, restart_interval)
        blocks.append((len(out), len(body)))
        handle = varint(len(out)) + varint(len(body))
        index_entries.append(((chunk[-1][0] if chunk else b"") + b"\xff", handle))
        out += with_trailer(body)
    if repeat_index and index_entries:
        index_entries = [index_entries[0]] * repeat_index + index_entries
    meta = block_body([])
    meta_handle = (len(out), len(meta))
    blocks.append(meta_handle)
    out += with_trailer(meta)
    index = block_body(index_entries, restart_interval=1)
    index_handle = (len(out), len(index))
    blocks.append(index_handle)
    out += with_trailer(index)
    footer = (varint(meta_handle[0]) + varint(meta_handle[1]) + varint(index_handle[0])
              + varint(index_handle[1]))
    out += footer.ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out), blocks


def fix_block_crc(table: bytearray, block: tuple[int, int]) -> None:
    """Recompute the trailer crc of the block body at ``block`` after it was edited."""
    offset, size = block
    compression = table[offset + size]
    crc = mask_crc(crc32c(bytes(table[offset:offset + size]) + bytes([compression])))
    table[offset + size + 1:offset + size + 5] = struct.pack("<I", crc)


def string_tensor(values: list[bytes]) -> tuple[bytes, int]:
    """TF's string-tensor bytes for ``values`` and the masked crc its entry records."""
    lengths = b"".join(varint(len(v)) for v in values)
    crc = 0
    for v in values:
        crc = crc32c(struct.pack("<I" if len(v) <= 0xFFFFFFFF else "<Q", len(v)), crc)
    checksum = struct.pack("<I", mask_crc(crc))
    crc = crc32c(checksum, crc)
    for v in values:
        crc = crc32c(v, crc)
    return lengths + checksum + b"".join(values), mask_crc(crc)
