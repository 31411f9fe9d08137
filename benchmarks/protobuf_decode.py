"""Hand-written wire parser vs the ``protobuf`` runtime, for the TensorBundle entries.

The question of issue 18: would decoding TF's protos with the ``protobuf`` package (and
TF's .proto definitions) remove a class of bugs at no speed cost? This builds the
``BundleEntryProto`` / ``TensorShapeProto`` descriptors at run time (no protoc, no TF),
decodes every entry of the V2 0.35 fixture index both ways, side by side, checks that
both give the same (dtype, shape, shard, offset, size, crc), and feeds both the crafted
inputs that used to break the hand parser (a field with the wrong wire type, a negative
size, a 2**40 dimension) to see what each does with them. Figures: docs/security.md.

    .venv/bin/python benchmarks/protobuf_decode.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "fuzz"))

from mobilevec.errors import WeightsError  # noqa: E402
from mobilevec.formats import tf_checkpoint as tfc  # noqa: E402

INDEX = REPO / "tests" / "fixtures" / "tf_ckpt_v2_035" / "model.ckpt.index"


def entry_class():
    """BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto), built at run time."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="bundle.proto", package="tf")
    dim = file.message_type.add(name="Dim")
    dim.field.add(name="size", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    dim.field.add(name="name", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    shape = file.message_type.add(name="TensorShapeProto")
    shape.field.add(name="dim", number=2, type=f.TYPE_MESSAGE, type_name=".tf.Dim",
                    label=f.LABEL_REPEATED)
    shape.field.add(name="unknown_rank", number=3, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    entry = file.message_type.add(name="BundleEntryProto")
    for name, number, kind in (("dtype", 1, f.TYPE_ENUM), ("shard_id", 3, f.TYPE_INT32),
                               ("offset", 4, f.TYPE_INT64), ("size", 5, f.TYPE_INT64),
                               ("crc32c", 6, f.TYPE_FIXED32)):
        field = entry.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
        if kind == f.TYPE_ENUM:
            field.type = f.TYPE_INT32  # DataType enum: its int value is what is needed
    entry.field.add(name="shape", number=2, type=f.TYPE_MESSAGE,
                    type_name=".tf.TensorShapeProto", label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tf.BundleEntryProto"))


def by_hand(path: Path, entries) -> list[tuple]:
    out = []
    for key, value in entries:
        e = tfc._parse_entry(path, key.decode(), value)
        out.append((e.dtype, e.shape, e.shard_id, e.offset, e.size, e.crc))
    return out


def by_runtime(cls, entries) -> list[tuple]:
    out = []
    for _key, value in entries:
        m = cls.FromString(value)
        out.append((m.dtype, tuple(d.size for d in m.shape.dim), m.shard_id, m.offset,
                    m.size, m.crc32c))
    return out


def median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import google.protobuf
    import wire
    from google.protobuf.internal import api_implementation

    cls = entry_class()
    entries = tfc._read_table(INDEX)[1:]
    assert by_hand(INDEX, entries) == by_runtime(cls, entries), "the decoders disagree"
    hand = median(lambda: by_hand(INDEX, entries), args.repeat)
    runtime = median(lambda: by_runtime(cls, entries), args.repeat)
    print(f"protobuf {google.protobuf.__version__} ({api_implementation.Type()} backend)")
    whole = median(lambda: tfc.read_tf_checkpoint(INDEX.with_suffix("")), args.repeat)
    print(f"{len(entries)} BundleEntryProto: hand-written {hand * 1e3:.2f} ms, "
          f"protobuf runtime {runtime * 1e3:.2f} ms (ratio {runtime / hand:.2f}); the whole "
          f"read_tf_checkpoint of that bundle: {whole * 1e3:.1f} ms")
    crafted = {
        "dtype as a length-delimited field": wire.encode_fields([(1, 2, b"\x01"), (5, 0, 4)]),
        "negative size": wire.encode_fields([(1, 0, 1), (5, 0, -4)]),
        "dimension 2**40 x 2**40": wire.encode_fields([(1, 0, 1), (2, 2, wire.encode_fields(
            [(2, 2, wire.encode_fields([(1, 0, 1 << 40)]))] * 2))]),
        "truncated": wire.encode_fields([(1, 0, 1), (2, 2, b"\x12\x05")])[:-1],
    }
    for what, value in crafted.items():
        try:
            e = tfc._parse_entry(INDEX, "w", value)
            hand_says = f"parsed (size {e.size}, shape {e.shape}): the checks after it decide"
        except WeightsError as err:
            hand_says = f"WeightsError ({str(err).split(': ', 2)[-1]})"
        try:
            m = cls.FromString(value)
            runtime_says = (f"parsed: dtype {m.dtype}, size {m.size}, shape "
                            f"{[d.size for d in m.shape.dim]}")
        except Exception as err:  # noqa: BLE001 - reported as it is
            runtime_says = f"{type(err).__name__}: {err}"
        print(f"- {what}: hand-written -> {hand_says}; runtime -> {runtime_says}")


if __name__ == "__main__":
    main()
