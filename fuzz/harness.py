"""Mutation fuzzing of mobilevec's weight readers: every case in a forked child with limits.

``run(fmt, cases, seed)`` builds the seeds of a format (fuzz/seeds.py), makes ``cases``
mutants (case ``i`` is reproducible from ``(seed, fmt, i)`` alone) and reads each one with
the format's reader in a child process that has an address-space limit (``RLIMIT_AS``:
what it holds at the fork plus :data:`MEMORY_SLACK` plus twice the file and model size)
and a CPU limit (``RLIMIT_CPU``, :data:`CPU_SECONDS`), under a wall-clock timeout. Each
case ends as one of:

``ok`` / ``weights_error``
    what the reader contract allows;
``raw:<Type>``
    any other exception (a bug);
``cpu`` / ``hang`` / ``memory`` / ``crash:<signal>``
    the CPU limit, the wall timeout, a MemoryError or a signal: bugs, except for ``.h5``
    where ``cpu`` and ``memory`` stand for the sandbox's own limits, which turn them into
    a WeightsError (mobilevec/formats/_h5_child.py); they are counted apart.

Mutations are byte-level (truncation, bit flips, overwrites, extreme integers in 1, 2, 4
and 8 bytes and as varints, insertions, deletions, repeats, splices) and structure-aware:
safetensors headers and ``.npy`` headers edited as JSON/dict text, manifests edited as
rows, TensorBundles edited as tables (keys, values, nested protobuf fields, tensor
bytes, repeated block handles) and written back with every crc32c recomputed, so that
the mutants get past the checksums.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import seeds as _seeds
import wire

CPU_SECONDS = 2  # the reader contract: at most 2 s of CPU
WALL_SECONDS = 30.0  # a case past this is a hang (the machine may be busy)
MEMORY_SLACK = 64 << 20  # allocator and numpy overhead beyond 2 x (file + model)

EXTREMES = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
            (1 << 64) - 1, -1, -2, -(1 << 31), -(1 << 63))


# --- outcomes --------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str
    detail: str = ""
    cpu_seconds: float = 0.0
    rss_growth: int = 0  # peak resident bytes of the child beyond what it held at the call


@dataclass
class Report:
    fmt: str
    cases: int = 0
    kinds: Counter = field(default_factory=Counter)
    failures: list[tuple[int, str, Outcome]] = field(default_factory=list)
    max_cpu: float = 0.0
    max_rss_growth: int = 0
    seconds: float = 0.0

    def add(self, index: int, description: str, outcome: Outcome) -> None:
        self.cases += 1
        self.kinds[outcome.kind] += 1
        self.max_cpu = max(self.max_cpu, outcome.cpu_seconds)
        self.max_rss_growth = max(self.max_rss_growth, outcome.rss_growth)
        if not acceptable(self.fmt, outcome):
            self.failures.append((index, description, outcome))


def acceptable(fmt: str, outcome: Outcome) -> bool:
    if outcome.kind in ("ok", "weights_error"):
        return True
    return fmt == "h5" and outcome.kind in ("cpu", "memory")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_in_child(call: Callable[[], object], budget: int, cpu: int = CPU_SECONDS,
                 wall: float = WALL_SECONDS) -> Outcome:
    """Run ``call()`` in a forked child with ``budget`` bytes of address space beyond the
    parent's and ``cpu`` seconds of CPU; classify how it ended."""
    from mobilevec.errors import WeightsError

    held = _address_space()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, the call, one line of result, no cleanup handlers
        os.close(read_end)
        kind, detail, base = "crash:setup", "", 0
        try:
            limit = held + budget
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            # A forked child starts with fewer resident pages than its parent (shared
            # library pages are faulted in lazily), so growth is measured from here.
            base = _resident_bytes()
            try:
                call()
                kind = "ok"
            except WeightsError as e:
                kind, detail = "weights_error", str(e)[:300]
            except MemoryError:
                kind = "memory"
            except BaseException as e:  # noqa: BLE001 - the point is to catch everything
                kind = f"raw:{type(e).__name__}"
                detail = "".join(traceback.format_exception(e)[-3:])[-1500:]
        finally:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            with open(write_end, "w") as out:
                out.write(json.dumps([kind, detail, max(0, peak - base)]))
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + wall
    status, usage, ticks = 0, None, -1
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            # On a busy machine a child can get little CPU in ``wall`` seconds: while it is
            # still using CPU (it will meet its CPU limit), wait on; a child that used
            # none since the last look is blocked, and that is a hang.
            now = _child_ticks(pid)
            if now > ticks >= -1 and time.monotonic() < deadline + 20 * wall:
                ticks, deadline = now, time.monotonic() + wall
                continue
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            os.close(read_end)
            return Outcome("hang", f"killed: blocked for {wall:.0f} s", _cpu(usage))
        time.sleep(0.001)
    with open(read_end) as f:
        text = f.read()
    cpu_used, growth = _cpu(usage), 0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # SIGXCPU comes only at the soft CPU limit (rusage may read a tick below it);
        # SIGKILL at the hard one.
        kind = "cpu" if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu) \
            else f"crash:{signal.Signals(sig).name}"
        return Outcome(kind, "", cpu_used, growth)
    try:
        kind, detail, growth = json.loads(text)
    except ValueError:
        kind, detail = "crash:no-answer", text[:200]
    return Outcome(kind, detail, cpu_used, growth)


def _child_ticks(pid: int) -> int:
    """CPU clock ticks (user + system) a running child has used, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return -1


def _cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime if usage is not None else 0.0


# --- byte mutations --------------------------------------------------------------------------

def _int_bytes(rng: random.Random, value: int) -> bytes:
    kind = rng.choice(("u8", "le16", "le32", "le64", "be32", "be64", "varint"))
    if kind == "varint":
        return wire.varint(value)
    size = {"u8": 1, "le16": 2, "le32": 4, "le64": 8, "be32": 4, "be64": 8}[kind]
    order = "big" if kind.startswith("be") else "little"
    return (value % (1 << (8 * size))).to_bytes(size, order)


def mutate_bytes(rng: random.Random, data: bytes, aligned: int = 1) -> tuple[bytes, str]:
    """One byte-level mutation of ``data`` and what it was."""
    buf = bytearray(data)
    n = len(buf)
    if n == 0:
        return bytes(rng.randbytes(rng.randint(1, 16))), "fill empty"
    op = rng.choice(("truncate", "flip", "flip", "overwrite", "extreme", "extreme",
                     "extreme", "insert", "delete", "repeat", "splice", "zero", "ones"))
    pos = rng.randrange(n)
    if aligned > 1 and op in ("extreme", "overwrite"):
        pos -= pos % aligned
    if op == "truncate":
        keep = rng.choice((rng.randrange(n), rng.randrange(max(1, n // 8)), n - rng.randint(
            1, min(n, 64))))
        return bytes(buf[:keep]), f"truncate to {keep}"
    if op == "flip":
        flips = [(rng.randrange(n), 1 << rng.randrange(8)) for _ in range(rng.randint(1, 4))]
        for p, bit in flips:
            buf[p] ^= bit
        return bytes(buf), f"flip {flips}"
    if op == "overwrite":
        chunk = rng.randbytes(rng.randint(1, 16))
        buf[pos:pos + len(chunk)] = chunk
        return bytes(buf[:max(n, pos + len(chunk))]), f"overwrite {len(chunk)} at {pos}"
    if op == "extreme":
        value = rng.choice(EXTREMES)
        chunk = _int_bytes(rng, value)
        buf[pos:pos + len(chunk)] = chunk
        return bytes(buf), f"extreme {value} ({len(chunk)} bytes) at {pos}"
    if op == "insert":
        chunk = rng.randbytes(rng.randint(1, 64))
        return bytes(buf[:pos] + chunk + buf[pos:]), f"insert {len(chunk)} at {pos}"
    if op == "delete":
        size = rng.randint(1, max(1, min(256, n - pos)))
        return bytes(buf[:pos] + buf[pos + size:]), f"delete {size} at {pos}"
    if op == "repeat":
        size = rng.randint(1, max(1, min(512, n - pos)))
        times = rng.choice((2, 3, 16, 200))
        return bytes(buf[:pos] + buf[pos:pos + size] * times + buf[pos + size:]), \
            f"repeat {size} at {pos} x{times}"
    if op == "splice":
        src, size = rng.randrange(n), rng.randint(1, 64)
        buf[pos:pos + size] = data[src:src + size]
        return bytes(buf), f"splice {size} from {src} to {pos}"
    size = rng.randint(1, 64)
    buf[pos:pos + size] = (b"\0" if op == "zero" else b"\xff") * len(buf[pos:pos + size])
    return bytes(buf), f"{op} {size} at {pos}"


# --- structure-aware mutations ---------------------------------------------------------------

def _extreme(rng: random.Random) -> int:
    return rng.choice(EXTREMES)


def mutate_fields(rng: random.Random, buf: bytes, depth: int = 0) -> tuple[bytes, str]:
    """Mutate one field of a serialized protobuf message, recursing into nested messages,
    and re-encode every enclosing length."""
    try:
        fields = wire.decode_fields(buf)
    except ValueError:
        return mutate_bytes(rng, buf)
    if not fields:
        return wire.encode_fields([(rng.randint(1, 8), rng.choice((0, 2, 5)),
                                    _extreme(rng) % (1 << 64))]), "add a field"
    i = rng.randrange(len(fields))
    number, wire_type, value = fields[i]
    op = rng.random()
    if wire_type == 2 and op < 0.45 and depth < 6:
        inner, what = mutate_fields(rng, value, depth + 1)
        fields[i] = (number, 2, inner)
        return wire.encode_fields(fields), f"field {number} > {what}"
    if op < 0.6:
        new_type = rng.choice([t for t in (0, 1, 2, 5) if t != wire_type])
        new_value = value if new_type == 2 and isinstance(value, bytes) else (
            _extreme(rng) % (1 << 64) if new_type != 2 else rng.randbytes(rng.randint(0, 9)))
        fields[i] = (number, new_type, new_value)
        return wire.encode_fields(fields), f"field {number}: wire type {wire_type}->{new_type}"
    if op < 0.8:
        if wire_type == 2:
            value, what = mutate_bytes(rng, value)
        else:
            value, what = _extreme(rng) % (1 << 64), "extreme"
        fields[i] = (number, wire_type, value)
        return wire.encode_fields(fields), f"field {number}: {what}"
    if op < 0.9:
        fields.insert(i, fields[i] if rng.random() < 0.5 else
                      (rng.randint(1, 12), 0, _extreme(rng) % (1 << 64)))
        return wire.encode_fields(fields), f"field {number}: repeated or added"
    del fields[i]
    return wire.encode_fields(fields), f"field {number}: deleted"


def _mutate_bundle(rng: random.Random, files: dict[str, bytes],
                   bundle: _seeds.Bundle) -> str:
    """Edit a TensorBundle (table or data) and re-encode it with valid checksums."""
    entries = list(bundle.entries)
    op = rng.random()
    repeat = 0
    if op < 0.35:  # a value: BundleHeaderProto or BundleEntryProto, field by field
        i = rng.randrange(len(entries))
        value, what = mutate_fields(rng, entries[i][1])
        entries[i] = (entries[i][0], value)
        what = f"entry {entries[i][0][:40]!r}: {what}"
    elif op < 0.45:  # a key
        i = rng.randrange(len(entries))
        key, what = mutate_bytes(rng, entries[i][0])
        entries[i] = (key, entries[i][1])
        what = f"key {i}: {what}"
    elif op < 0.55:  # the entry list: repeats, reorderings, removals
        i, j = rng.randrange(len(entries)), rng.randrange(len(entries))
        choice = rng.choice(("duplicate", "swap", "delete", "many"))
        if choice == "duplicate":
            entries.insert(i, entries[i])
        elif choice == "swap":
            entries[i], entries[j] = entries[j], entries[i]
        elif choice == "delete":
            del entries[i]
        else:
            entries[i + 1:i + 1] = [(entries[i][0] + bytes([k % 256]) * (k // 256 + 1),
                                     entries[i][1]) for k in range(rng.choice((50, 2000)))]
        what = f"entries: {choice} {i}"
    elif op < 0.6:
        repeat = rng.choice((1, 5, 500))
        what = f"index lists the first block {repeat} extra times"
    elif op < 0.8:  # tensor bytes, with the entry's crc recomputed so they get past it
        return _mutate_tensor_bytes(rng, files, bundle, entries)
    else:  # raw bytes of one block, with that block's crc recomputed
        table, blocks = wire.encode_table(entries)
        block = rng.choice(blocks)
        body, what = mutate_bytes(rng, table[block[0]:block[0] + block[1]])
        if len(body) == block[1]:
            table = bytearray(table)
            table[block[0]:block[0] + block[1]] = body
            wire.fix_block_crc(table, block)
            files[bundle.index] = bytes(table)
            return f"block at {block[0]}: {what} (crc fixed)"
        files[bundle.index] = bytes(table[:block[0]]) + body + bytes(table[block[0] + block[1]:])
        return f"block at {block[0]}: {what} (resized, crc stale)"
    files[bundle.index] = wire.encode_table(entries, repeat_index=repeat)[0]
    return what


def _mutate_tensor_bytes(rng: random.Random, files: dict[str, bytes], bundle: _seeds.Bundle,
                         entries: list[tuple[bytes, bytes]]) -> str:
    from mobilevec.formats import _protobuf as pb
    from mobilevec.formats.tf_checkpoint import crc32c, mask_crc

    i = rng.randrange(1, len(entries)) if len(entries) > 1 else 0
    key, value = entries[i]
    fields = pb.parse_message(value)
    shard, offset, size = (pb.get_int64(fields, n) for n in (3, 4, 5))
    shard_files = [s for s in bundle.shards if f"-{shard:05d}-of-" in s]
    if not shard_files or size <= 0:
        return "no-op (tensor without bytes)"
    name = shard_files[0]
    data = bytearray(files[name])
    dtype = pb.get_int(fields, 1)
    if dtype == 7 and rng.random() < 0.7:  # a string tensor: new strings, valid checksums
        values = [rng.randbytes(rng.randint(0, 40))]
        if key == b"_CHECKPOINTABLE_OBJECT_GRAPH":
            blob, _ = mutate_fields(rng, bytes(data[offset:offset + size])[
                _string_prefix(data, offset):])
            values = [blob]
        payload, crc = wire.string_tensor(values)
    else:
        payload, what = mutate_bytes(rng, bytes(data[offset:offset + size]))
        crc = mask_crc(crc32c(payload))
    data[offset:offset + size] = payload
    files[name] = bytes(data)
    fixed = [f for f in wire.decode_fields(value) if f[0] not in (5, 6)]
    fixed += [(5, 0, len(payload)), (6, 5, crc)]
    entries[i] = (key, wire.encode_fields(fixed))
    # Later tensors of the shard moved if the size changed: shift their offsets too.
    delta = len(payload) - size
    if delta:
        for j, (k, v) in enumerate(entries):
            f = pb.parse_message(v)
            if j != i and pb.get_int64(f, 3) == shard and pb.get_int64(f, 4) > offset:
                moved = [x for x in wire.decode_fields(v) if x[0] != 4]
                entries[j] = (k, wire.encode_fields(moved + [(4, 0, pb.get_int64(f, 4)
                                                                 + delta)]))
    files[bundle.index] = wire.encode_table(entries)[0]
    return f"tensor {key[:40]!r}: {len(payload)} new bytes (crc fixed)"


def _string_prefix(data: bytearray, offset: int) -> int:
    """Bytes before the payload of a scalar string tensor: its varint length + 4-byte crc."""
    pos = offset
    while data[pos] & 0x80:
        pos += 1
    return pos + 1 - offset + 4


def _mutate_json_header(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Edit a safetensors header as JSON and write the file back with the new length."""
    length = int.from_bytes(blob[:8], "little")
    header, data = json.loads(blob[8:8 + length]), blob[8 + length:]
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names) if names else None
    op = rng.choice(("dtype", "shape", "offsets", "entry", "header", "metadata", "length"))
    if op == "dtype" and name:
        header[name]["dtype"] = rng.choice(("BF16", "F8_E4M3", "F8_E5M2", "C64", "F4",
                                            "I128", "", 3, None, "f32"))
    elif op == "shape" and name:
        header[name]["shape"] = rng.choice(([1 << 40], [-1], [2**31, 2**31, 2**31], [],
                                            [0], [1] * 40, "3", [1.5], [True]))
    elif op == "offsets" and name:
        header[name]["data_offsets"] = rng.choice(([0, 1 << 62], [-4, 0], [8, 4], [0, 0],
                                                   [0], [0, 4, 8], ["0", "4"], None))
    elif op == "entry" and name:
        header[name] = rng.choice(([], "x", 1, None, {}))
    elif op == "header":
        header = rng.choice(([1, 2], "s", 3, None, [header]))
    elif op == "metadata":
        header["__metadata__"] = rng.choice(({"a": 1}, [], "x", {"k": ["v"]}))
    text = json.dumps(header).encode()
    if op == "length":
        return struct.pack("<Q", rng.choice((0, 1, len(text) + 1, 1 << 60))) + text + data, \
            "length"
    return struct.pack("<Q", len(text)) + text + data, f"json {op} of {name!r}"


def _mutate_npy_header(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Rewrite the header dict of a ``.npy`` with a hostile descr, shape or order."""
    version = blob[6]
    size = struct.unpack("<H" if version == 1 else "<I", blob[8:10] if version == 1
                         else blob[8:12])[0]
    start = 10 if version == 1 else 12
    data = blob[start + size:]
    descr = rng.choice(("'<f4'", "'|O'", "'<U3'", "[('a', '<f4')]", "'<f4', 'x': 1",
                        "'V0'", "'<c16'", "'(2,)<f4'", "'>f8'", "'S0'"))
    shape = rng.choice(("(1099511627776,)", "(-1,)", "(2**40,)", "()", "(3, 3, 3, 4)",
                        "(4294967296, 4294967296)", "(1,)*40", "'x'", "(1.5,)", "(0,)"))
    order = rng.choice(("False", "True", "1", "'F'"))
    if rng.random() < 0.5:
        descr = "'<f4'"
    text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}"
    header = text.encode("latin1") + b" " * (15 - (len(text) + start) % 16) + b"\n"
    prefix = blob[:6] + bytes([version, 0])
    length = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return prefix + length + header + data, f"npy header {text}"


def _mutate_manifest(rng: random.Random, text: bytes, files: list[str]) -> tuple[bytes, str]:
    lines = text.decode("utf-8").splitlines()
    i = rng.randrange(1, len(lines))
    cells = lines[i].split("\t")
    op = rng.choice(("escape", "absolute", "duplicate", "columns", "latin1", "shape",
                     "dtype", "symlinkish", "empty", "many"))
    if op == "escape":
        cells[0] = rng.choice(("../" + cells[0], "../../etc/passwd", "a/../../x.npy",
                               "..", "."))
    elif op == "absolute":
        cells[0] = rng.choice(("/etc/passwd", "/dev/zero", "C:\\x.npy", "\\\\host\\x"))
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "columns":
        cells = cells[:rng.randint(0, len(cells))] + ["x"] * rng.randint(0, 3)
    elif op == "latin1":
        return (text.replace(b"Mobilenet", b"Mobil\xe9net")), "latin-1 bytes"
    elif op == "shape" and len(cells) > 2:
        cells[2] = rng.choice(("[1099511627776]", "[-1]", "[x]", "(" + "1," * 5000 + ")",
                               "", "[3,3,3,4"))
    elif op == "dtype" and len(cells) > 3:
        cells[3] = rng.choice(("object", "float64", "", "x" * 1000))
    elif op == "symlinkish":
        cells[0] = "nested/" + cells[0]
    elif op == "empty":
        return b"", "empty manifest"
    else:
        lines += [f"{cells[0]}\tv{k}" for k in range(rng.choice((100, 30000)))]
    lines[i] = "\t".join(cells)
    return ("\n".join(lines) + "\n").encode(), f"manifest row {i}: {op}"


# --- cases -----------------------------------------------------------------------------------

def make_case(seed: _seeds.Seed, rng: random.Random) -> tuple[dict[str, bytes], str]:
    """The files of one mutant of ``seed`` and a description of the mutations."""
    files = dict(seed.files)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        try:
            done.append(_mutate_once(seed, files, rng))
        except Exception:  # noqa: BLE001 - an earlier mutation broke the structure: go raw
            name = rng.choice(sorted(files))
            files[name], what = mutate_bytes(rng, files[name])
            done.append(f"{name}: {what}")
    return files, "; ".join(done)


def _mutate_once(seed: _seeds.Seed, files: dict[str, bytes], rng: random.Random) -> str:
    fmt = seed.format
    if seed.bundles and (fmt == "tf_checkpoint" or rng.random() < 0.6):
        bundle = rng.choice(seed.bundles)
        if rng.random() < 0.85:
            return _mutate_bundle(rng, files, bundle)
        name = rng.choice([bundle.index, *bundle.shards])
    elif fmt == "saved_model":
        name = next(k for k in files if k.endswith("saved_model.pb"))
        if rng.random() < 0.8:
            files[name], what = mutate_fields(rng, files[name])
            return f"{name}: {what}"
    elif fmt == "npy":
        name = rng.choice(sorted(files))
        if name.endswith("MANIFEST.tsv") and rng.random() < 0.6:
            try:
                files[name], what = _mutate_manifest(rng, files[name], sorted(files))
                return f"{name}: {what}"
            except Exception:  # noqa: BLE001 - an earlier mutation broke the text: go raw
                pass
        elif name.endswith(".npy") and rng.random() < 0.4 and files[name][:6] == b"\x93NUMPY":
            try:
                files[name], what = _mutate_npy_header(rng, files[name])
                return f"{name}: {what}"
            except Exception:  # noqa: BLE001 - an earlier mutation broke the header: go raw
                pass
    elif fmt == "safetensors":
        name = next(iter(files))
        if rng.random() < 0.5:
            try:
                files[name], what = _mutate_json_header(rng, files[name])
                return what
            except Exception:  # noqa: BLE001 - an earlier mutation broke the JSON: go raw
                pass
    else:
        name = next(iter(files))
    files[name], what = mutate_bytes(rng, files[name], aligned=4 if fmt == "tflite" else 1)
    return f"{name}: {what}"


def reader(fmt: str) -> Callable[[Path], object]:
    """The reader the fuzz holds to the contract, for one format."""
    if fmt == "h5":
        from mobilevec.errors import WeightsError
        from mobilevec.formats import _h5_child
        from mobilevec.formats.keras_h5 import _child_answer, variables_from_raw

        def read_h5(path: Path) -> object:
            # What the sandbox child does, minus its catch-all: h5py's own errors for a
            # corrupt file and the child's refusals are the expected ends; any other
            # exception is a bug in mobilevec's code and counts as one.
            try:
                raw = _h5_child.read_raw(str(path))
            except _h5_child.Refused as e:
                raise WeightsError(path, str(e), e.variable) from e
            except _h5_child.HDF5_ERRORS as e:
                raise WeightsError(path, f"not a readable HDF5 file ({e})") from e
            done = subprocess.CompletedProcess([], 0, _h5_child.encode_answer(*raw), b"")
            return variables_from_raw(path, *_child_answer(path, done))

        return read_h5
    from mobilevec.formats import npy, safetensors_format, saved_model, tf_checkpoint, tflite

    def read_safetensors(path: Path) -> object:
        safetensors_format.read_safetensors_metadata(path)
        return safetensors_format.read_safetensors(path)

    return {"safetensors": read_safetensors, "npy": npy.read_npy_dir,
            "tflite": tflite.read_tflite, "tf_checkpoint": tf_checkpoint.read_tf_checkpoint,
            "saved_model": saved_model.read_saved_model}[fmt]


def case_rng(seed: int, fmt: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{fmt}:{index}")


def write_case(folder: Path, files: dict[str, bytes]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run(fmt: str, cases: int, seed: int = 0, *, start: int = 0,
        keep: Path | None = None, progress: Callable[[Report], None] | None = None) -> Report:
    """Fuzz ``fmt`` with cases ``start .. start + cases - 1``; failing mutants are written
    under ``keep`` (``<fmt>-<case>/``) when given."""
    seeds = _seeds.build(fmt)
    read = reader(fmt)
    report = Report(fmt)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{fmt}-") as tmp:
        folder = Path(tmp) / "case"
        for index in range(start, start + cases):
            rng = case_rng(seed, fmt, index)
            chosen = seeds[rng.randrange(len(seeds))]
            files, description = make_case(chosen, rng)
            write_case(folder, files)
            size = sum(len(v) for v in files.values())
            budget = MEMORY_SLACK + 2 * (size + chosen.model_bytes)
            path = folder / chosen.entry
            outcome = run_in_child(lambda p=path: read(p), budget)
            report.add(index, f"{chosen.name}: {description}", outcome)
            if keep is not None and not acceptable(fmt, outcome):
                shutil.copytree(folder, keep / f"{fmt}-{index}", dirs_exist_ok=True)
            if progress is not None and report.cases % 500 == 0:
                progress(report)
    report.seconds = time.monotonic() - began
    return report


def summary(report: Report) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
    return (f"{report.fmt}: {report.cases} cases in {report.seconds:.0f} s ({kinds}); "
            f"{len(report.failures)} failures; max CPU {report.max_cpu:.2f} s; max RSS "
            f"growth {report.max_rss_growth / 2**20:.0f} MiB")


def env_ready() -> None:
    """Fuzz children must never start the HDF5 plugin loader (as in the sandbox)."""
    os.environ["HDF5_PLUGIN_PRELOAD"] = "::"
