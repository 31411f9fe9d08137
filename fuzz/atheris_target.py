"""Coverage-guided fuzzing of one reader with atheris (libFuzzer over Python coverage).

    pip install atheris       # the 'fuzz' extra; Linux wheels for CPython 3.11
    python fuzz/atheris_target.py FORMAT [-runs=20000] [-max_len=65536] [CORPUS_DIR]

FORMAT is ``tflite``, ``safetensors``, ``npy`` or ``tf_checkpoint``. The corpus starts
from the seeds of fuzz/seeds.py. The input must load or raise WeightsError: any other
exception is reported by libFuzzer as a crash; ``-timeout`` (default here 2 s, the
reader contract) and ``-rss_limit_mb`` (default here 2048) report hangs and memory
blow-ups. For ``tf_checkpoint`` the input is not the index file itself (its crc32c would
stop almost every mutant): it is read as the fields of a bundle, whose table this target
writes with valid checksums, so that the fuzzer explores the entry parsing. ``.h5`` is
not fuzzed here: its parser is C (HDF5), which atheris does not instrument; it runs in
the sandbox and is covered by fuzz/run.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

with atheris.instrument_imports(include=["mobilevec"]):
    from mobilevec.errors import WeightsError
    from mobilevec.formats import npy, safetensors_format, tf_checkpoint, tflite

import seeds  # noqa: E402
import wire  # noqa: E402

FORMAT = sys.argv[1] if len(sys.argv) > 1 else "tflite"
WORK = Path(tempfile.mkdtemp(prefix=f"atheris-{FORMAT}-"))


def _bundle(data: bytes) -> Path:
    fdp = atheris.FuzzedDataProvider(data)
    entries = [(b"", fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))]
    for i in range(fdp.ConsumeIntInRange(0, 12)):
        entries.append((b"v%03d" % i, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 96))))
    shard = fdp.ConsumeBytes(fdp.remaining_bytes())
    prefix = WORK / "b"
    Path(f"{prefix}.index").write_bytes(wire.encode_table(entries)[0])
    Path(f"{prefix}.data-00000-of-00001").write_bytes(shard)
    return prefix


def _npy(data: bytes) -> Path:
    folder = WORK / "w"
    folder.mkdir(exist_ok=True)
    (folder / "MANIFEST.tsv").write_text("file\ttf_slim_variable\na.npy\tMobilenetV2/x\n")
    (folder / "a.npy").write_bytes(data)
    return folder


def _file(name: str):
    def write(data: bytes) -> Path:
        path = WORK / name
        path.write_bytes(data)
        return path
    return write


TARGETS = {
    "tflite": (_file("m.tflite"), tflite.read_tflite),
    "safetensors": (_file("w.safetensors"), safetensors_format.read_safetensors),
    "npy": (_npy, npy.read_npy_dir),
    "tf_checkpoint": (_bundle, tf_checkpoint.read_tensor_bundle),
}


def test_one_input(data: bytes) -> None:
    write, read = TARGETS[FORMAT]
    with contextlib.suppress(WeightsError):
        read(write(data))


def _corpus() -> str:
    folder = WORK / "corpus"
    folder.mkdir()
    for i, seed in enumerate(seeds.build(FORMAT if FORMAT != "tf_checkpoint" else "safetensors")):
        if FORMAT == "npy":
            data = next(v for k, v in seed.files.items() if k.endswith(".npy"))
        elif FORMAT == "tf_checkpoint":
            data = os.urandom(64)
        else:
            data = next(iter(seed.files.values()))
        (folder / f"seed{i}").write_bytes(data)
    return str(folder)


def main() -> None:
    flags = [a for a in sys.argv[2:] if a.startswith("-")]
    dirs = [a for a in sys.argv[2:] if not a.startswith("-")] or [_corpus()]
    defaults = ["-timeout=2", "-rss_limit_mb=2048", "-max_len=65536"]
    given = {f.split("=")[0] for f in flags}
    args = [sys.argv[0], *[d for d in defaults if d.split("=")[0] not in given], *flags, *dirs]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
